"""dvt-runtime: the torch-free runtime for exported DVT bundles (numpy + stdlib at its core).

    from dvt_runtime import Bundle
    bundle = Bundle.open("bundles/dvt_small_cifar-onnx-fp32", device_name="laptop")
    pred = bundle.predict(bgr_image)   # one uint8 BGR image -> Prediction (label, class_name, confidence, exit)
"""

__version__ = "0.2.0"

from dvt_runtime.bundle import Bundle, InputError, Prediction  # noqa: E402
from dvt_runtime.calibration import Calibration, CalibrationError  # noqa: E402
from dvt_runtime.latency import LatencyProfile  # noqa: E402
from dvt_runtime.manifest import Manifest, ManifestError  # noqa: E402
from dvt_runtime.preprocess import Preprocess  # noqa: E402

__all__ = ["Bundle", "Calibration", "CalibrationError", "InputError", "LatencyProfile", "Manifest", "ManifestError", "Prediction", "Preprocess",
           "__version__"]
