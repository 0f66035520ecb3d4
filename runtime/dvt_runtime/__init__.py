"""dvt-runtime: the torch-free runtime for exported DVT bundles (numpy + stdlib at its core).

    from dvt_runtime import Bundle
    bundle = Bundle.open("bundles/dvt_small_cifar-onnx-fp32", device_name="laptop")
    pred = bundle.predict(bgr_image)   # one uint8 BGR image -> Prediction (label, class_name, confidence, exit)

Errors a caller may catch: ``InputError``, ``ManifestError``, ``CalibrationError``, ``ProfileError`` and ``NonFiniteOutput``
(all ValueErrors: bad input, an edited bundle, calibration or profile, an exit that answered NaN or infinite logits) and
``BackendUnavailable`` (the backend's library is missing or cannot run the bundle here; a RuntimeError), and its
``BackendRunError`` (the backend failed running a stage: its own error is the ``__cause__``).
"""

__version__ = "0.2.0"

import os  # noqa: E402

# ONNX Runtime 1.29+ sends usage telemetry from Linux, macOS, Android and iOS and keeps a device identifier under the home
# folder (on a read-only one it warns on every command): off for the devices this runtime ships to, unless the user set it.
# ONNX Runtime reads it once, when it loads: dvt_runtime is imported before it, by every command and bundle here.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from dvt_runtime.backends import BackendRunError, BackendUnavailable  # noqa: E402
from dvt_runtime.bundle import Bundle, InputError, NonFiniteOutput, Prediction  # noqa: E402
from dvt_runtime.calibration import Calibration, CalibrationError  # noqa: E402
from dvt_runtime.latency import LatencyProfile, ProfileError  # noqa: E402
from dvt_runtime.manifest import Manifest, ManifestError  # noqa: E402
from dvt_runtime.preprocess import Preprocess  # noqa: E402

__all__ = ["BackendRunError", "BackendUnavailable", "Bundle", "Calibration", "CalibrationError", "InputError", "LatencyProfile", "Manifest", "ManifestError",
           "NonFiniteOutput", "Prediction", "Preprocess", "ProfileError", "__version__"]
