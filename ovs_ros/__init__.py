"""ovs_ros: open-vocabulary panoptic segmentation for ROS 2 robots.

The model side (`ovs_ros.models`, `segmenter`, `postprocess`, `vocabulary`) imports torch and numpy only; the ROS
adapter lives in `ovs_ros.node` and `ovs_ros.image_codec`.
"""

__version__ = "0.1.0"
