"""The built wheel carries what an installed node needs: data files where ament and `paths.share_dir` look."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(REPO)], check=True, capture_output=True)
    (wheel,) = out.glob("ovs_ros-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


@pytest.mark.parametrize("relative", [
    "share/ament_index/resource_index/packages/ovs_ros",
    "share/ovs_ros/package.xml",
    "share/ovs_ros/launch/ovs.launch.py",
    "share/ovs_ros/config/ovs.yaml",
    "share/ovs_ros/config/segmenter/tiny.yaml",
    "share/ovs_ros/config/vocabularies/coco_panoptic.yaml",
    "share/ovs_ros/models/maskclippp_eva02_b16_coco_panoptic.yaml",
])
def test_wheel_ships_data_file(wheel_names, relative):
    assert any(name.endswith(".data/data/" + relative) for name in wheel_names), relative


def test_wheel_has_no_tests_or_training(wheel_names):
    assert not any(name.startswith(("test/", "training/")) for name in wheel_names)


def test_entry_points_declared(wheel_names):
    assert any(name.endswith("entry_points.txt") for name in wheel_names)
