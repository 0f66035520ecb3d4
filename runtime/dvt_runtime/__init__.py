"""dvt-runtime: the torch-free runtime for exported DVT bundles (numpy + stdlib at its core)."""

__version__ = "0.1.0"

from dvt_runtime.preprocess import Preprocess  # noqa: E402

__all__ = ["Preprocess", "__version__"]
