"""The code's shape, as the project agreed it: rooms that do one thing, one chaining loop."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = [ROOT / "dvt_edge", ROOT / "runtime" / "dvt_runtime", ROOT / "apps"]
ONE_THING = {"dvt_edge/models.py", "runtime/dvt_runtime/search.py"}  # each does one thing, at length
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 500, 80


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in pkg.rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_modules_and_functions_stay_small(path):
    rel = path.relative_to(ROOT).as_posix()
    text = path.read_text()
    if rel not in ONE_THING:
        assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{rel} has {len(text.splitlines())} lines: split it by concern"
    long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(ast.parse(text))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{rel}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_one_chaining_loop():
    """Feeding exit k's features and relations to exit k+1 is written once, in dvt_runtime.bundle;
    export verification, calibration, profiling, the bench and the webcam all go through it."""
    callers = {}
    for path in _modules():
        rel = path.relative_to(ROOT).as_posix()
        for pattern in (r"\.run_stage\(", r"\.run_exit\("):
            if re.search(pattern, path.read_text()):
                callers.setdefault(rel, []).append(pattern)
    assert set(callers) == {"runtime/dvt_runtime/bundle.py"}, callers
    tree = ast.parse((ROOT / "runtime" / "dvt_runtime" / "bundle.py").read_text())
    stage_loops = [f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
                   for loop in ast.walk(f) if isinstance(loop, ast.For)
                   and any(isinstance(c, ast.Call) and getattr(c.func, "attr", "") in ("run_stage", "run_exit") for c in ast.walk(loop))]
    # chain(): every sample through every exit; _cascade(): the same with early exit and regrouping;
    # _cascade_one(): one image, no regrouping (the latency path), checked against _cascade in test_batching;
    # run_stage(): one exit over a batch in chunks (no chaining)
    assert sorted(stage_loops) == ["_cascade", "_cascade_one", "chain", "run_stage"], stage_loops
