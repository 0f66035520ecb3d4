"""Test vectors for a port of the cascade to your own code (Kotlin, Swift, C++ around the artifacts): for each image,
the preprocessed input, every exit's logits, and the cascade's answer at fixed thresholds, as this runtime computes
them. A port decodes the same files, and compares its input tensor, then its logits, then its answers.

    python -m dvt_runtime vectors --bundle B --out vectors.npz photos/

The ``.npz`` holds (N images, E exits): ``files`` (N,) names as given; ``input`` (N, C, H, W) float32; ``logits_exit1``
.. ``logits_exitE`` (N, classes) float32; ``exit`` (N,) the 1-based exit that answered; ``label`` (N,) and
``confidence`` (N,) its class index and softmax probability; ``thresholds`` (E-1,) float64, NaN where an exit never
stops; ``classes`` (classes,). No pickled objects: ``np.load(path)`` reads it (``allow_pickle`` stays off).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from dvt_runtime.cli import Parser

__all__ = ["port_vectors", "main"]


def port_vectors(bundle, files: Sequence[Path], thresholds: Optional[list] = None, show_progress: bool = False) -> dict[str, np.ndarray]:
    """The vectors of ``files`` (every one readable: an unreadable image is an ImageError naming it) through ``bundle``
    at ``thresholds`` (None: the bundle's own, as ``predict`` without a budget uses them); ``show_progress``: a bar over
    the decoding, the slow part for photos."""
    from dvt_runtime.console import progress
    from dvt_runtime.images import read_image
    from dvt_runtime.search import thresholds_from_list

    if not files:
        raise ValueError("no images given: pass image files or folders")
    x = np.concatenate([bundle.preprocess(read_image(f)) for f in progress(files, desc="vectors", unit="image", enabled=show_progress)])  # (N, C, H, W)
    logits = bundle.run_exits(x)  # E x (N, classes)
    preds = bundle.predict(list(x), thresholds=thresholds)
    used = thresholds if thresholds is not None else bundle.default_thresholds()
    thr = thresholds_from_list(used, bundle.num_exits)[: bundle.num_exits - 1].astype(np.float64)  # inf: never stops
    out = {"files": np.array([str(f) for f in files]), "input": x, "classes": np.array(bundle.classes),
           "exit": np.array([p.exit + 1 for p in preds], np.int64), "label": np.array([p.label for p in preds], np.int64),
           "confidence": np.array([p.confidence for p in preds], np.float64), "thresholds": np.where(np.isfinite(thr), thr, np.nan)}
    out.update({f"logits_exit{e + 1}": np.asarray(v, np.float32) for e, v in enumerate(logits)})
    return out


def _earlier_vectors(path: Path) -> bool:
    """Whether ``path`` is an earlier vectors file (an npz holding ``input`` and ``logits_exit1``), which a new run may replace."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return {"input.npy", "logits_exit1.npy", "exit.npy"} <= set(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def main(argv: Optional[Sequence[str]] = None) -> int:
    from dvt_runtime.backends import BackendUnavailable
    from dvt_runtime.bundle import Bundle
    from dvt_runtime.checks import parse_thresholds
    from dvt_runtime.device import host_calibration
    from dvt_runtime.io import atomic_write, check_out_path, os_error_text
    from dvt_runtime.predict import image_files

    ap = Parser(prog="dvt-runtime vectors", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", help="image files and folders (read recursively, as predict reads them)")
    ap.add_argument("--bundle", required=True, help="bundle directory")
    ap.add_argument("--out", required=True, help="the .npz to write")
    ap.add_argument("--thresholds", default=None, help="per-exit confidences (default: the bundle's manifest thresholds)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per session (default 1)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    try:
        import io

        check_out_path(args.out, replaces=_earlier_vectors, example="vectors.npz")  # a bundle's own artifact had been overwritten
        thresholds = parse_thresholds(args.thresholds) if args.thresholds is not None else None
        bundle = Bundle.open(args.bundle, threads=args.threads, device_name="")  # the manifest's: what a port reproduces
        if thresholds is None and (cal := host_calibration(bundle)):  # the API's warning named Bundle.open, which this command has not
            print(f"note: the vectors hold the answers at the manifest's thresholds; this host's calibration "
                  f"({cal}) is not used: pass --thresholds to record another's", file=sys.stderr)
        vec = port_vectors(bundle, image_files(args.images), thresholds, show_progress=not args.no_progress)
        buf = io.BytesIO()
        np.savez(buf, **vec)
        atomic_write(args.out, buf.getvalue())
    except (ValueError, OSError, BackendUnavailable) as e:  # ImageError, ManifestError, InputError are ValueErrors
        print(f"error: {os_error_text(e)}", file=sys.stderr)
        return 2
    counts = np.bincount(vec["exit"], minlength=bundle.num_exits + 1)[1:]
    print(f"wrote {args.out}: {len(vec['files'])} image(s), answered at exits 1-{bundle.num_exits}: {' / '.join(map(str, counts))}")
    return 0


if __name__ == "__main__":
    from dvt_runtime.console import run_cli

    sys.exit(run_cli(main))
