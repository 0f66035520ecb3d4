"""``dvt-edge``: one command, one subcommand per tool (the ``python -m`` forms keep working).

    dvt-edge train --model dvt_small_cifar --data cifar10-jpeg --epochs 42 --amp bf16 --out runs/ref
    dvt-edge export --target coreml              # the CIFAR-10 reference, to bundles/
    dvt-edge bench | evaluate | demo | zoo | data | model-card | webcam
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.util import find_spec
from typing import Optional

from dvt_runtime.cli import COMMANDS as DEVICE_COMMANDS
from dvt_runtime.cli import dispatch, usage

#: the webcam demo: ``dvt_edge.apps`` in an installed wheel, the checkout's top-level ``apps/`` otherwise (finding it imports
#: ``dvt_edge``, which loads torch only when its model and checkpoint names are used)
WEBCAM = "dvt_edge.apps.webcam" if find_spec("dvt_edge.apps") else "apps.webcam"

#: subcommand -> (module with a ``main(argv)``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("dvt_edge.train", "train a multi-exit DVT (DDP with torchrun)"),
    "evaluate": ("dvt_edge.evaluate", "per-exit accuracy, FLOPs-budget curve, exported bundles vs PyTorch"),
    "export": ("dvt_edge.export.__main__", "one graph per exit to ExecuTorch / Core ML / ONNX / ORT, verified"),
    "bench": ("dvt_edge.bench", "dynamic vs static, latency- vs FLOPs-calibrated, every target"),
    "demo": ("dvt_edge.demo", "the tour on the reference model"),
    "zoo": ("dvt_edge.zoo", "the registered models: exits, FLOPs, parameters"),
    "data": ("dvt_edge.data", "dataset info and preprocessed .npz export"),
    "model-card": ("dvt_edge.model_card", "publish a finished run as a checkpoint + model card"),
    "webcam": (WEBCAM, "live early-exit classification of camera or video frames"),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    return dispatch(COMMANDS, usage("dvt-edge", COMMANDS, "device side (torch-free): dvt-runtime " + " | ".join(DEVICE_COMMANDS)), argv, "dvt-edge",
                    elsewhere=dict.fromkeys(DEVICE_COMMANDS, "dvt-runtime"), version=__import__("dvt_edge").__version__)


def train(argv: Optional[Sequence[str]] = None) -> int:
    """``dvt-edge-train``: ``dvt-edge train`` under its own name (e.g. for ``torchrun``)."""
    return main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
