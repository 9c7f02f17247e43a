"""ovs_training: fine-tuning for ovs_ros classifiers (MaskCLIP++ recipe), evaluation and export.

Imports `ovs_ros.models`, never the reverse: the node loads what `export.py` writes without importing this package.
"""
__version__ = "0.1.0"
