"""dvt-edge: Dynamic Vision Transformers from a trained checkpoint to the device."""

from dvt_edge.checkpoint import CheckpointError, CheckpointInfo, load_checkpoint, save_checkpoint
from dvt_edge.models import DVT, DVTConfig, create_model, get_config, list_models

__version__ = "0.2.0"

__all__ = [
    "DVT",
    "DVTConfig",
    "CheckpointError",
    "CheckpointInfo",
    "create_model",
    "get_config",
    "list_models",
    "load_checkpoint",
    "save_checkpoint",
    "__version__",
]
