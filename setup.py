"""ament_python package that is also a plain pip package.

`pip install .` works on any machine (ROS 2 wheels are the optional `ros` extra); `colcon build` works in a ROS 2
workspace. torch is declared as a *range*: a Jetson's JetPack torch must never be replaced by pip.
"""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "ovs_ros"

RUNTIME = [
    "torch>=2.1",
    "torchvision>=0.16",
    "open_clip_torch>=2.24",
    "timm>=1.0.31",  # the EVA RoPE table uses RotaryEmbeddingCat.grid_type (mask_tokens.eva_rope_table)
    "numpy>=1.24",
    "opencv-python-headless>=4.8",
    "pyyaml>=6.0",
    "safetensors>=0.4",
    "tqdm>=4.60",
    "huggingface_hub>=0.20",
    "pillow>=9",  # the evaluation readers (PNG/TIF label maps)
]
EXTRAS = {
    # ROS 2 client library from PyPI wheels (any distro's apt install works as well; then skip this extra).
    "ros": [
        "ros-rclpy",
        "ros-sensor-msgs",
        "ros-std-msgs",
        "ros-diagnostic-msgs",
        "ros-rcl-interfaces",
        "ros-lifecycle-msgs",
        # rclpy's wheel loads the default middleware at init; the PyPI wheels do not pull it in themselves.
        "ros-rmw-fastrtps-cpp",
        "rosbags>=0.10.9",  # typestore API, v9 bag metadata, the MCAP writer the tests use
        "mcap>=1.1",
        "mcap-ros2-support>=0.5",
    ],
    "tensorrt": ["torch-tensorrt"],
    "weights": ["gdown>=5"],  # `ovs-weights download` of Google Drive files (MaskCLIP++, FC-CLIP, MAFT+)
    "eval": ["pycocotools>=2.0.7"],  # ovs-eval's mask AP (COCOeval, as detectron2 / MaskCLIP++ measure it)
    "dev": [
        "pytest>=7",
        "pycocotools>=2.0.7",
        "pytest-timeout",
        "ruff",
        "transformers>=4.40",
        "scipy",
        "onnx",
        "onnxruntime",
        "scikit-image",
        "matplotlib",
        "psutil",
        "tensorboard",
    ],
}

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "training", "training.*"]),
    package_data={PACKAGE: ["py.typed"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/config/vocabularies",
         glob("config/vocabularies/*.yaml") + glob("config/vocabularies/*.tsv")),  # .tsv: ADE-847, PC-459 tables
        (f"share/{PACKAGE}/config/segmenter", glob("config/segmenter/*.yaml")),
        (f"share/{PACKAGE}/models", glob("models/*.yaml")),
    ],
    install_requires=RUNTIME,
    extras_require=EXTRAS,
    python_requires=">=3.10",
    zip_safe=True,
    maintainer="ovs_ros maintainers",
    maintainer_email="maintainers@ovs-ros.dev",
    description="Open-vocabulary panoptic segmentation for ROS 2 (Mask2Former + MaskCLIP++).",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "ovs_node = ovs_ros.node:main",
            "ovs-segment = ovs_ros.cli:main",
            "ovs-replay = ovs_ros.replay:main",
            "ovs-vocab = ovs_ros.vocab_cli:main",
            "ovs-demo = ovs_ros.cli:demo_main",
            "ovs-benchmark = ovs_ros.benchmark:main",
            "ovs-export = ovs_ros.cli:export_main",
            "ovs-weights = ovs_ros.weights_cli:main",
            "ovs-eval = ovs_ros.eval_cli:main",
        ],
    },
)
