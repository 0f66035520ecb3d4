"""dvt-edge: Dynamic Vision Transformers from a trained checkpoint to the device.

The names below load their modules (and torch) when first used, not at ``import dvt_edge``: ``dvt-edge --help`` and the
torch-free webcam demo (``dvt_edge.apps``) need none of them.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_LAZY = {"CheckpointError": "dvt_edge.checkpoint", "CheckpointInfo": "dvt_edge.checkpoint", "load_checkpoint": "dvt_edge.checkpoint",
         "save_checkpoint": "dvt_edge.checkpoint", "DVT": "dvt_edge.models", "DVTConfig": "dvt_edge.models",
         "create_model": "dvt_edge.models", "get_config": "dvt_edge.models", "list_models": "dvt_edge.models"}

__all__ = ["DVT", "DVTConfig", "CheckpointError", "CheckpointInfo", "create_model", "get_config", "list_models", "load_checkpoint",
           "save_checkpoint", "__version__"]


_SUBMODULES = ("checkpoint", "models")  # dvt_edge.models.register_model(...) after `import dvt_edge` (the README's form)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once
        return value
    if name in _SUBMODULES:  # imported on first use, as the eager imports had made them attributes
        return importlib.import_module(f"dvt_edge.{name}")
    raise AttributeError(f"module 'dvt_edge' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
