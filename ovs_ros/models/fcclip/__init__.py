"""FC-CLIP mask generator (bytedance/fc-clip @2b0bbe2): frozen open_clip ConvNeXt backbone, the Mask2Former pixel
decoder, FC-CLIP's masked-attention decoder with an open-vocabulary class head, the out-of-vocabulary branch on the
same backbone pass, FC-CLIP's geometric ensemble, and the released-checkpoint key map."""
from .backbone import ClipBackboneOutput, FCCLIPBackbone, build_fcclip_open_clip
from .classification import classification_logits, mask_pool, synonym_text_classifier, with_void
from .config import FCCLIPConfig
from .convert import convert_fcclip_state_dict, load_fcclip_checkpoint, to_released_state_dict
from .decoder import FCCLIPTransformerDecoder
from .ensemble import fcclip_ensemble_probs
from .generator import FCCLIPGenerator, FCCLIPOutput

__all__ = [
    "ClipBackboneOutput",
    "FCCLIPBackbone",
    "FCCLIPConfig",
    "FCCLIPGenerator",
    "FCCLIPOutput",
    "FCCLIPTransformerDecoder",
    "build_fcclip_open_clip",
    "classification_logits",
    "convert_fcclip_state_dict",
    "fcclip_ensemble_probs",
    "load_fcclip_checkpoint",
    "mask_pool",
    "synonym_text_classifier",
    "to_released_state_dict",
    "with_void",
]
