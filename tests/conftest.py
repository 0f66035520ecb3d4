import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# keep tests from fighting over the 2 cores when run in parallel
os.environ.setdefault("OMP_NUM_THREADS", "1")
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the runtime's torch-free tests
    pass


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def micro_ckpt(tmp_path_factory) -> Path:
    """A dvt_micro_fmnist checkpoint trained for a few seconds (exits better than noise)."""
    from dvt_edge.train import build_parser, train

    d = tmp_path_factory.mktemp("ckpt")
    train(build_parser().parse_args(["--model", "dvt_micro_fmnist", "--epochs", "1", "--train-limit", "2000", "--val-limit", "200",
                                     "--batch-size", "64", "--lr", "1e-2", "--warmup-epochs", "0.1", "--no-augment",
                                     "--threads", "1", "--quiet", "--out", str(d / "run")]))
    return d / "run" / "best.pt"


@pytest.fixture(scope="session")
def onnx_bundle(micro_ckpt, tmp_path_factory) -> Path:
    from dvt_edge.export import export_bundle

    return export_bundle(str(micro_ckpt), "onnx", "fp32", out=str(tmp_path_factory.mktemp("bundle") / "b"), verify_n=50, progress=False).path
