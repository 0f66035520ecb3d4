"""``make demo``: the tour of dvt-edge on this machine.

Today: the model zoo (exits, FLOPs, parameters of every variant) and, when the
reference checkpoint is present, its per-exit accuracy on the Fashion-MNIST test split.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from dvt_edge.zoo import format_table, zoo_rows

REFERENCE = Path(__file__).resolve().parent / "assets" / "dvt_tiny_fmnist.pt"


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dvt_edge.demo", description=__doc__)
    ap.add_argument("--checkpoint", default=str(REFERENCE), help="model to tour (default: the reference checkpoint)")
    args = ap.parse_args(argv)
    print("== dvt-edge model zoo (FLOPs counted from each stage's graph) ==")
    print(format_table(zoo_rows()))
    ckpt = Path(args.checkpoint)
    if ckpt.is_file():
        from dvt_edge.evaluate import main as evaluate_main

        print(f"\n== evaluating {ckpt} ==")
        return evaluate_main(["--checkpoint", str(ckpt), "--out", "runs/demo/evaluate"])
    print(f"\n(no checkpoint at {ckpt}; train one with `python -m dvt_edge.train --out runs/ref`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
