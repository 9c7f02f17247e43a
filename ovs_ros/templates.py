"""Prompt template sets for the CLIP text tower.

A template set belongs to the model card whenever PSM weights are loaded (corrections.md item 8): a LinearPSM trained
with 14 templates expects exactly these 14 sentences, in this order, per synonym.

Sources (public lists, copied verbatim, order preserved):
- ``t1``: MaskCLIP++ EVA-L configs, ``["a photo of a {}."]``.
- ``t14``: the ViLD prompt list used by FC-CLIP (``VILD_PROMPT`` in ``fcclip/fcclip.py``) and MaskCLIP++ ``t14``.
- ``t80``: the 80 ImageNet templates of the CLIP paper (open_clip ``OPENAI_IMAGENET_TEMPLATES``; SED's
  ``IMAGENET_PROMPT``, MaskCLIP++ ``t80``).
"""
from __future__ import annotations

from typing import Dict, Tuple

__all__ = ["TEMPLATES", "T1", "T14", "T80", "get_templates"]

T1: Tuple[str, ...] = ("a photo of a {}.",)

T14: Tuple[str, ...] = (
    'a photo of a {}.',
    'This is a photo of a {}',
    'There is a {} in the scene',
    'There is the {} in the scene',
    'a photo of a {} in the scene',
    'a photo of a small {}.',
    'a photo of a medium {}.',
    'a photo of a large {}.',
    'This is a photo of a small {}.',
    'This is a photo of a medium {}.',
    'This is a photo of a large {}.',
    'There is a small {} in the scene.',
    'There is a medium {} in the scene.',
    'There is a large {} in the scene.',
)

T80: Tuple[str, ...] = (
    'a bad photo of a {}.',
    'a photo of many {}.',
    'a sculpture of a {}.',
    'a photo of the hard to see {}.',
    'a low resolution photo of the {}.',
    'a rendering of a {}.',
    'graffiti of a {}.',
    'a bad photo of the {}.',
    'a cropped photo of the {}.',
    'a tattoo of a {}.',
    'the embroidered {}.',
    'a photo of a hard to see {}.',
    'a bright photo of a {}.',
    'a photo of a clean {}.',
    'a photo of a dirty {}.',
    'a dark photo of the {}.',
    'a drawing of a {}.',
    'a photo of my {}.',
    'the plastic {}.',
    'a photo of the cool {}.',
    'a close-up photo of a {}.',
    'a black and white photo of the {}.',
    'a painting of the {}.',
    'a painting of a {}.',
    'a pixelated photo of the {}.',
    'a sculpture of the {}.',
    'a bright photo of the {}.',
    'a cropped photo of a {}.',
    'a plastic {}.',
    'a photo of the dirty {}.',
    'a jpeg corrupted photo of a {}.',
    'a blurry photo of the {}.',
    'a photo of the {}.',
    'a good photo of the {}.',
    'a rendering of the {}.',
    'a {} in a video game.',
    'a photo of one {}.',
    'a doodle of a {}.',
    'a close-up photo of the {}.',
    'a photo of a {}.',
    'the origami {}.',
    'the {} in a video game.',
    'a sketch of a {}.',
    'a doodle of the {}.',
    'a origami {}.',
    'a low resolution photo of a {}.',
    'the toy {}.',
    'a rendition of the {}.',
    'a photo of the clean {}.',
    'a photo of a large {}.',
    'a rendition of a {}.',
    'a photo of a nice {}.',
    'a photo of a weird {}.',
    'a blurry photo of a {}.',
    'a cartoon {}.',
    'art of a {}.',
    'a sketch of the {}.',
    'a embroidered {}.',
    'a pixelated photo of a {}.',
    'itap of the {}.',
    'a jpeg corrupted photo of the {}.',
    'a good photo of a {}.',
    'a plushie {}.',
    'a photo of the nice {}.',
    'a photo of the small {}.',
    'a photo of the weird {}.',
    'the cartoon {}.',
    'art of the {}.',
    'a drawing of the {}.',
    'a photo of the large {}.',
    'a black and white photo of a {}.',
    'the plushie {}.',
    'a dark photo of a {}.',
    'itap of a {}.',
    'graffiti of the {}.',
    'a toy {}.',
    'itap of my {}.',
    'a photo of a cool {}.',
    'a photo of a small {}.',
    'a tattoo of the {}.',
)

TEMPLATES: Dict[str, Tuple[str, ...]] = {"t1": T1, "t14": T14, "t80": T80}


def get_templates(template_set: str) -> Tuple[str, ...]:
    """Return the templates of a named set; unknown names raise `KeyError` listing the known ones."""
    try:
        return TEMPLATES[template_set]
    except KeyError:
        raise KeyError(f"unknown template set {template_set!r}; known: {sorted(TEMPLATES)}") from None
