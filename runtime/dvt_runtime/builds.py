"""Which build of a library is installed, and the fix that suits it: a Jetson runs NVIDIA's ``onnxruntime-gpu`` and
JetPack's OpenCV, both built for numpy 1, where PyPI's advice (reinstall ``onnxruntime``, upgrade OpenCV) would replace
the GPU build with the CPU one, or hide the system OpenCV and its GStreamer cameras."""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["NUMPY_ABI_SIGNS", "installed", "installed_distribution", "numpy_abi_error", "rebuild_fix", "gpu_build_hint"]

#: what a library built for numpy 1 says when imported under numpy 2 (and the reverse)
NUMPY_ABI_SIGNS = ("numpy.core.multiarray failed to import", "compiled using numpy 1", "_array_api not found", "numpy.dtype size changed",
                   "module compiled against abi version", "numpy.core._multiarray_umath")
#: the distributions that install each module (a Jetson's or a GPU server's onnxruntime is onnxruntime-gpu)
MODULE_DISTRIBUTIONS = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                                        "onnxruntime-qnn", "onnxruntime-silicon", "onnxruntime-training"),
                        "cv2": ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless", "opencv-contrib-python")}
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def installed(dists: tuple[str, ...]) -> Optional[tuple[str, str]]:
    """(name, version) of the first of the pip distributions ``dists`` that is installed, or None."""
    from importlib import metadata

    for dist in dists:
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def installed_distribution(module: str, among: Optional[tuple[str, ...]] = None) -> Optional[str]:
    """The pip distribution that installed ``module`` (the first of its known ones, or of ``among``), or None (not from pip:
    a system package such as JetPack's OpenCV, or not installed)."""
    found = installed(among or MODULE_DISTRIBUTIONS.get(module, (module,)))
    return found[0] if found else None


def numpy_abi_error(err: BaseException) -> bool:
    """Whether ``err`` says the library was built for another numpy major version."""
    return any(sign in str(err).lower() for sign in NUMPY_ABI_SIGNS)


def rebuild_fix(module: str, err: BaseException, pypi_fix: str) -> str:
    """The fix for ``module`` installed but failing to import with ``err``: ``pypi_fix`` (a matching build from PyPI), unless
    the installed build is not PyPI's CPU one (NVIDIA's onnxruntime-gpu, a system OpenCV), which it would replace: then
    numpy 1 for a numpy-ABI error, or that build's own maker's."""
    ours = {"onnxruntime": "onnxruntime", "cv2": "opencv-python-headless"}.get(module)
    dist = installed_distribution(module) if ours else None
    if module == "cv2" and dist not in (None, ours):  # pip's GUI or contrib OpenCV (a webcam window needs one): the same again
        return (f"Install a build that matches, e.g. pip install --force-reinstall {dist} (the OpenCV build installed here; the runtime's "
                f"extra names {ours}, which installs the same cv2 package over it)")
    if ours is None or dist == ours:  # executorch, coremltools: PyPI's builds only
        both = module == "onnxruntime" and installed_distribution("onnxruntime-gpu", ("onnxruntime-gpu",)) is not None
        return (f"Install a build that matches, e.g. {pypi_fix}" if not both else "Both onnxruntime and onnxruntime-gpu are "
                "installed, into the same onnxruntime package: pip uninstall both, then install the one you run (the GPU one, "
                "on a Jetson NVIDIA's wheel for your JetPack)")
    what = f"this {dist} build" if dist else f"this {module} (not installed by pip: a system package, e.g. JetPack's)"
    if numpy_abi_error(err) and np.__version__.split(".")[0] != "1":
        return (f"{what[0].upper()}{what[1:]} is built for numpy 1 and this environment has numpy {np.__version__}: pip install 'numpy<2' (NVIDIA's "
                f"Jetson wheels and JetPack's OpenCV are numpy-1 builds), or a build of it for numpy 2; do not replace it with "
                f"PyPI's {ours}, which {'has no CUDA or TensorRT' if module == 'onnxruntime' else 'cannot open GStreamer cameras'}")
    if module == "cv2":  # a system OpenCV (JetPack's is an apt package)
        return f"Reinstall {what} with the system's package manager (JetPack: apt), for this environment's numpy and Python"
    return (f"Reinstall {what} from where it came, for this environment's numpy and Python (PyPI on a server, NVIDIA's wheel "
            f"for your JetPack on a Jetson); PyPI's {ours} would replace it")


def gpu_build_hint(missing: list[str]) -> str:
    """Said when CUDA or TensorRT execution providers are missing from PyPI's CPU-only onnxruntime: the build to install."""
    if not set(missing) & set(GPU_PROVIDERS) or installed_distribution("onnxruntime") != "onnxruntime":
        return ""
    return ("; this onnxruntime is PyPI's CPU-only build: for CUDA or TensorRT, pip uninstall onnxruntime, then install "
            "onnxruntime-gpu (on a Jetson, NVIDIA's wheel for your JetPack: PyPI has none for aarch64; see the README's "
            "Jetson section); both install the same onnxruntime package, so keep only one")
