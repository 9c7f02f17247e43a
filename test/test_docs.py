"""docs/ros_interface.md states the node's interface as the code has it."""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_parameter_table_is_the_parameter_table():
    spec = importlib.util.spec_from_file_location("param_table", REPO / "tools" / "param_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    docs = (REPO / "docs" / "ros_interface.md").read_text()
    assert module.table() in docs, "regenerate: python tools/param_table.py, paste under '## Parameters'"


def test_every_output_topic_is_documented():
    from ovs_ros.node.outputs import FRAME_OUTPUTS

    docs = (REPO / "docs" / "ros_interface.md").read_text()
    for name in FRAME_OUTPUTS + ("labels", "label_info"):
        assert f"| `~/{name}`" in docs, name
