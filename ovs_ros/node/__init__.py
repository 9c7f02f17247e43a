"""The ovs_ros ROS 2 node: a lifecycle node composed of small helpers around the ROS-free `Segmenter`.

  core.py               the lifecycle node: composition, worker, threads and callback groups
  params.py             the parameter table (defaults, descriptors, checks)
  input.py              camera subscription: topic names, QoS matched to the publishers, camera_info
  frames.py             the newest-frame slot between callback and worker
  publisher.py          the publisher thread: encode/publish overlaps the next frame (one pending result)
  health.py             counters, input-loss accounting, throttled logs
  diagnostics.py        /diagnostics values and status
  outputs.py            publishers; payloads.py what goes on them (JSON, class/confidence images, vision_msgs)
  vocabulary_params.py  the vocabulary as parameters: sources, requests, refusals
  log_bridge.py         Python logging of the model code through the ROS logger
  main.py               `ovs_node` / `python -m ovs_ros.node`

Run: `ovs_node --ros-args --params-file config/ovs.yaml`; see docs/ros_interface.md.
"""
from ovs_ros.node.main import main

__all__ = ["main"]
