"""Overlay rendering: the camera image with coloured masks, outlines and labels (for RViz's Image display and the CLI).

Vectorised: one palette lookup and one blend for the whole image; the only per-segment work is drawing the label text,
which OpenCV does natively and which is bounded by `max_labels`.
"""
from __future__ import annotations

import colorsys

import cv2
import numpy as np

from ovs_ros.results import PanopticResult


def class_palette(num_classes: int) -> np.ndarray:
    """Distinct, deterministic RGB colours per class index (golden-ratio hue walk), [num_classes, 3] uint8."""
    hues = (np.arange(num_classes) * 0.618033988749895) % 1.0
    rows = [colorsys.hsv_to_rgb(h, 0.75 if i % 2 else 0.95, 0.95 if i % 3 else 0.8) for i, h in enumerate(hues)]
    return (np.asarray(rows, dtype=np.float32).reshape(-1, 3) * 255).round().astype(np.uint8)


def segment_colours(result: PanopticResult) -> np.ndarray:
    """Colour per segment id (row 0 = void, unused); things get a per-instance shade of their class colour."""
    num_classes = max([s.class_index for s in result.segments], default=-1) + 1
    palette = class_palette(max(num_classes, 1)).astype(np.int16)
    colours = np.zeros((max([s.id for s in result.segments], default=0) + 1, 3), dtype=np.uint8)
    for instance, seg in enumerate(result.segments):
        base = palette[seg.class_index]
        shift = ((instance * 37) % 61 - 30) if seg.is_thing else 0
        colours[seg.id] = np.clip(base + shift, 0, 255).astype(np.uint8)
    return colours


def render_overlay(
    rgb: np.ndarray,
    result: PanopticResult,
    *,
    alpha: float = 0.5,
    draw_outlines: bool = True,
    draw_labels: bool = True,
    max_labels: int = 64,
) -> np.ndarray:
    """Blend segment colours into `rgb` (HxWx3 uint8), draw segment outlines and `label score` tags."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be HxWx3 uint8, got shape {rgb.shape} dtype {rgb.dtype}")
    panoptic = result.panoptic
    if panoptic.shape != rgb.shape[:2]:
        raise ValueError(f"panoptic map {panoptic.shape} does not match image {rgb.shape[:2]}")
    colours = segment_colours(result)
    ids = np.clip(panoptic, 0, len(colours) - 1)
    colour_image = colours[ids]
    covered = (panoptic > 0)[..., None]
    blended = np.where(covered, (rgb * (1.0 - alpha) + colour_image * alpha), rgb).astype(np.uint8)
    if draw_outlines:
        # A pixel is on an outline where its id differs from the right or lower neighbour.
        edge = np.zeros(panoptic.shape, dtype=bool)
        edge[:, :-1] |= panoptic[:, :-1] != panoptic[:, 1:]
        edge[:-1, :] |= panoptic[:-1, :] != panoptic[1:, :]
        blended[edge] = 255
    if draw_labels and result.segments:
        _draw_labels(blended, result, max_labels)
    return blended


def _draw_labels(canvas: np.ndarray, result: PanopticResult, max_labels: int) -> None:
    height, width = canvas.shape[:2]
    scale = float(np.clip(min(height, width) / 900.0, 0.35, 1.2))
    thickness = 1 if scale < 0.8 else 2
    for seg in sorted(result.segments, key=lambda s: -s.area)[:max_labels]:
        x, y, w, h = seg.bbox_xywh
        text = f"{seg.label} {seg.score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        cx = int(np.clip(x + w // 2 - tw // 2, 0, max(width - tw, 0)))
        cy = int(np.clip(y + h // 2 + th // 2, th + 2, height - 2))
        cv2.rectangle(canvas, (cx - 2, cy - th - 2), (cx + tw + 2, cy + base), (0, 0, 0), thickness=-1)
        cv2.putText(canvas, text, (cx, cy), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
