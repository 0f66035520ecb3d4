"""``python -m dvt_edge.bench report A.json B.json ...``: results from several devices (bench runs, or a runtime-only device's
profile or calibration) merged into one report; and how a command saves its results before it shows them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional

from dvt_edge.bench_report import check_results_folder, load_results, markdown, write_outputs, wrote_line
from dvt_runtime.cli import Parser, command_name
from dvt_runtime.io import os_error_text

__all__ = ["report_main", "saved_then_shown"]


def report_main(argv: list[str]) -> int:
    """``bench report A.json B.json ...``: merge results from several devices into one report."""
    ap = Parser(prog=command_name("python -m dvt_edge.bench") + " report", description="merge results from several devices")
    ap.add_argument("results", nargs="+", help="bench.json files and merged reports; for a device that runs only the runtime, "
                                               "its profile (dvt-runtime profile ... --out) or calibration (<bundle>/calibration/<device>.json)")
    ap.add_argument("--out", default="runs/bench-report", help="folder for the merged report (default runs/bench-report)")
    ap.add_argument("--no-progress", action="store_true", help="accepted as every command takes it (a merge draws no progress bar)")
    a = ap.parse_args(argv)
    try:
        results = load_results(a.results)
        md = markdown(results)  # rendered before anything is written: a result it cannot render writes nothing
    except KeyError as e:
        print(f"error: a result lacks the field {e} (written by another dvt-edge version?); nothing was written", file=sys.stderr)
        return 2
    except (OSError, ValueError, TypeError) as e:
        print(f"error: {os_error_text(e)}", file=sys.stderr)
        return 2
    try:
        if Path(a.out).exists() and not Path(a.out).is_dir():
            raise ValueError(f"--out {a.out} is a file; pass a folder for the report")
        check_results_folder(Path(a.out), "report")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if (written := saved_then_shown(md, lambda: write_outputs(results, Path(a.out), "report"), "the report below was not saved ({})")) is None:
        return 2
    print(wrote_line(written, Path(a.out), "report"))
    return 0


def saved_then_shown(md: str, write: Callable[[], list[Path]], lost: str) -> Optional[list[Path]]:
    """The files first, then ``md`` on the terminal: a reader gone from stdout (``| head``) loses no file, and a failed write
    says ``lost`` (``{}``: why), still shows every figure, and gives None."""
    try:
        written = write()
    except OSError as e:  # the error first: a reader gone from stdout would hide it behind exit 141
        print("error: " + lost.replace("{}", os_error_text(e), 1), file=sys.stderr)  # not format(): --out may hold braces
        print(md)
        return None
    print(md)
    return written
