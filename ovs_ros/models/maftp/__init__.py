"""MAFT+ mask generator (jiaosiyu1999/MAFT-Plus @fd12806): FC-CLIP (`ovs_ros.models.fcclip`) with a fine-tuned
CLIP-V, the Content-Dependent Transfer on the text classifier, classification by the out-of-vocabulary branch alone
(the decoder gives the void probability), and the released-checkpoint key map."""
from .cdt import ContentDependentTransfer, dense_clip_embeddings
from .config import MAFTPlusConfig
from .convert import convert_maftp_state_dict, load_maftp_checkpoint, to_released_state_dict
from .generator import MAFTPlusGenerator, MAFTPlusOutput
from .inference import maftp_class_probs

__all__ = [
    "ContentDependentTransfer",
    "MAFTPlusConfig",
    "MAFTPlusGenerator",
    "MAFTPlusOutput",
    "convert_maftp_state_dict",
    "dense_clip_embeddings",
    "load_maftp_checkpoint",
    "maftp_class_probs",
    "to_released_state_dict",
]
