"""Evaluation exact to the references: panopticapi PQ, MaskCLIP++ SemSegEvaluator mIoU, readers of the standard
evaluation layouts (`datasets`), and the `ovs-eval` runner (`ovs_ros.eval_cli`). No ROS imports."""
from .panoptic_quality import PanopticSegment, PQStats, pq_image_stats, pq_summary
from .semantic_metrics import IGNORE_LABEL, SemSegStats, semseg_image_stats, semseg_summary

__all__ = [
    "IGNORE_LABEL",
    "PanopticSegment",
    "PQStats",
    "SemSegStats",
    "pq_image_stats",
    "pq_summary",
    "semseg_image_stats",
    "semseg_summary",
]
