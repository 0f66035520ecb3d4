"""int8 per exit: which quantization scheme each exit keeps, chosen by measured agreement.

With ``--scheme auto`` every scheme the target's recipe lists is exported for an exit, each
is run and timed by the device's runtime chained after the exits already chosen, and the
most faithful scheme is kept unless another within ``SPEED_SLACK_POINTS`` of its top-1
agreement with PyTorch fp32 runs at least ``MIN_SPEEDUP`` faster (then the fastest such); the
manifest records every candidate's figures.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Optional

import numpy as np

from dvt_edge.export.common import ExitArtifact, ExportError, exit_specs
from dvt_edge.export.targets import Target
from dvt_edge.export.verify import chained, open_sessions, verification_bundle

__all__ = ["int8_schemes", "pick_scheme", "CALIBRATED"]

# schemes that quantize activations statically, from ranges observed on calibration images (ONNX Runtime and
# ExecuTorch "static", Core ML "w8a8"); the others (dynamic activations, weight-only "linear"/"palettize") need none
CALIBRATED = frozenset({"static", "w8a8"})


def int8_schemes(t: Target, precision: str, scheme: Optional[str], num_exits: int) -> list[list[Optional[str]]]:
    """The schemes to try for each exit ([None] each when not int8): ``scheme`` is one scheme or ``auto`` for every exit,
    or one per exit, comma-separated (e.g. ``dynamic,dynamic,static``: the choices an ``auto`` export recorded in its
    manifest, pinned); ValueError lists the valid ones."""
    if precision != "int8":
        if scheme:
            raise ValueError(f"--scheme applies to int8 only (got precision {precision})")
        return [[None] for _ in range(num_exits)]
    valid = list(t.int8.get("schemes", []))
    chosen = (scheme or t.int8.get("default_scheme", valid[0])).split(",")
    if len(chosen) not in (1, num_exits):
        raise ValueError(f"--scheme {scheme!r} names {len(chosen)} schemes: give one (or 'auto') for every exit, or one per exit "
                         f"({num_exits}, comma-separated)")
    bad = [c for c in chosen if c != "auto" and c not in valid]
    if bad:
        raise ValueError(f"target {t.name!r} int8 schemes: {valid + ['auto']}; got {', '.join(map(repr, bad))}")
    return [valid if c == "auto" else [c] for c in (chosen * num_exits)[:num_exits]]


SPEED_SLACK_POINTS = 0.5  # top-1 agreement (points) a faster scheme may give up to the most faithful one
MIN_SPEEDUP = 0.05  # ... when it is at least this much faster (a smaller difference is timing noise)
TIMED_RUNS = 12  # chained runs timed per candidate and round (p50 of its stage)
TIMED_ROUNDS = 5  # rounds in which the candidates are timed in turn: the lowest round's p50 is the candidate's


def pick_scheme(model, t, candidates, graphs, chosen_artifacts, tmp, data, real_ref, e, notes, pre=None):
    """Keep the int8 scheme of exit ``e`` by measured agreement with PyTorch on real images and
    measured speed, both through the device's runtime chained after the exits already chosen
    (see :func:`_choose`); every scheme non-finite: ExportError."""
    if data.verify_x is None:
        sch, cdir, art = candidates[0]
        notes.append(f"exit {e + 1}: {sch} (no real images to compare schemes)")
    else:
        scored, rejected = [], {}
        for sch, cdir, art in candidates:
            partial = [*chosen_artifacts, _moved(art, cdir, tmp)]  # exits 1..e as seen from the bundle root
            try:
                sess = open_sessions(t, tmp, graphs[: e + 1], partial)
            except ExportError as ex:
                rejected[sch] = str(ex)
                continue
            if sess is None:  # the runtime does not run here: nothing to measure
                scored.append({"scheme": sch, "agreement": None, "max_abs_diff": None, "p50_ms": None, "c": (sch, cdir, art)})
                continue
            vb = verification_bundle(model, t, exit_specs(model, graphs, partial, tmp), sess, tmp, preprocess=pre)
            lg = chained(vb, data.verify_x, 1)[e]
            ok = bool(np.isfinite(lg).all())  # non-finite logits: never kept, not timed (the runtime would refuse them)
            scored.append({"scheme": sch, "agreement": float((lg.argmax(-1) == real_ref[e].argmax(-1)).mean() * 100) if ok else -1.0,
                           "max_abs_diff": float(np.abs(lg - real_ref[e]).max()) if ok else None,
                           "p50_ms": None, "c": (sch, cdir, art), "vb": vb if ok else None})
        _time_in_turn([s for s in scored if s.get("vb") is not None], data.verify_x, e)
        for s in scored:
            s.pop("vb", None)  # each candidate's sessions released now, not held by this list to the export's end
        if not scored:
            raise ExportError(f"exit {e + 1}: no int8 scheme produced an artifact the runtime can run: {rejected}")
        pick, why = _choose(scored)
        if pick["agreement"] is not None and pick["agreement"] < 0:
            raise ExportError(f"exit {e + 1}: every int8 scheme gave NaN or infinite logits on real images "
                              f"({', '.join(s['scheme'] for s in scored)}); export fp32, or int8 with other calibration data")
        sch, cdir, art = pick["c"]
        art.quantization["selection"] = {"rule": why, "candidates": [{k: v for k, v in s.items() if k != "c"} for s in scored],
                                         "rejected": rejected}
        notes.append(f"exit {e + 1}: " + ", ".join(_describe(s) for s in scored)
                     + "".join(f", {k} rejected ({v})" for k, v in rejected.items()) + f" -> {sch} ({why})")
    for name in [art.artifact, *art.extra_files]:
        shutil.move(str(cdir / name), str(tmp / name))
    for _, d, _ in candidates:
        if d != tmp:
            shutil.rmtree(d, ignore_errors=True)
    return sch, tmp, art


def _time_in_turn(scored: list[dict], x: np.ndarray, e: int) -> None:
    """Each candidate's ``p50_ms``: exit ``e``'s own stage, chained as the device runs it on a few real images, timed in
    :data:`TIMED_ROUNDS` rounds that take the candidates in turn, its lowest round's p50 (one after the other, a busy
    spell during one had chosen a scheme 25% slower than the other, as profiled later)."""
    from dvt_runtime.profile import profile_bundle

    for s in scored:
        s["p50_ms"] = math.inf
    for _ in range(TIMED_ROUNDS):
        for s in scored:
            prof = profile_bundle(s["vb"], warmup=2, runs=TIMED_RUNS, images=x[:4], progress=False)
            s["p50_ms"] = min(s["p50_ms"], float(prof.stages[e]["median"]))


def _choose(scored: list[dict]) -> tuple[dict, str]:
    """The most faithful candidate (best agreement, then smaller error), unless another within
    SPEED_SLACK_POINTS of its agreement is at least MIN_SPEEDUP faster (then the fastest such).
    Non-finite output (agreement -1) never wins over a finite one."""
    if any(s["agreement"] is None for s in scored):
        return scored[0], "first scheme: the runtime does not run on this host, nothing measured"
    best = max(s["agreement"] for s in scored)
    if best < 0:
        return scored[0], "every scheme gave non-finite logits"
    faithful = min((s for s in scored if s["agreement"] == best), key=lambda s: s["max_abs_diff"])
    near = [s for s in scored if s["agreement"] >= best - SPEED_SLACK_POINTS]
    fastest = min(near, key=lambda s: (s["p50_ms"], -s["agreement"], s["max_abs_diff"]))
    if fastest is not faithful and fastest["p50_ms"] <= faithful["p50_ms"] * (1 - MIN_SPEEDUP):
        return fastest, f"fastest within {SPEED_SLACK_POINTS} points of the best agreement ({MIN_SPEEDUP:.0%} or more faster)"
    return faithful, "best agreement (then smaller error)" + ("" if len(near) == 1 else f"; no scheme within {SPEED_SLACK_POINTS} "
                                                                                        f"points was {MIN_SPEEDUP:.0%} faster")


def _describe(s: dict) -> str:
    if s["agreement"] is None:
        return f"{s['scheme']} (not measured)"
    if s["agreement"] < 0:
        return f"{s['scheme']} non-finite logits"
    return f"{s['scheme']} {s['agreement']:.2f}% agreement (max|dlogit| {s['max_abs_diff']:.3f}, stage p50 {s['p50_ms']:.3f} ms, the lowest of {TIMED_ROUNDS} rounds)"


def _moved(art: ExitArtifact, src: Path, tmp: Path) -> ExitArtifact:
    """An artifact as seen from the bundle root (for scoring before it is moved there)."""
    return ExitArtifact(os.path.relpath(src / art.artifact, tmp), art.quantization, art.undelegated_ops, art.extra_files)
