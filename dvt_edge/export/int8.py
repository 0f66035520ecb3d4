"""int8 per exit: which quantization scheme each exit keeps, chosen by measured agreement.

With ``--scheme auto`` every scheme the target's recipe lists is exported for an exit, each
is run by the device's runtime chained after the exits already chosen, and the scheme whose
logits agree best with PyTorch fp32 on real images is kept (ties: the smaller error).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

import numpy as np

from dvt_edge.export.common import ExitArtifact, ExportError, exit_specs
from dvt_edge.export.targets import Target
from dvt_edge.export.verify import chained, open_sessions, verification_bundle

__all__ = ["int8_schemes", "pick_scheme"]


def int8_schemes(t: Target, precision: str, scheme: Optional[str]) -> list[Optional[str]]:
    """The schemes to try for each exit ([None] when not int8); ValueError lists the valid ones."""
    if precision != "int8":
        if scheme:
            raise ValueError(f"--scheme applies to int8 only (got precision {precision})")
        return [None]
    valid = list(t.int8.get("schemes", []))
    chosen = scheme or t.int8.get("default_scheme", valid[0])
    if chosen != "auto" and chosen not in valid:
        raise ValueError(f"target {t.name!r} int8 schemes: {valid + ['auto']}; got {chosen!r}")
    return valid if chosen == "auto" else [chosen]


def pick_scheme(model, t, candidates, graphs, chosen_artifacts, tmp, data, real_ref, e, notes):
    """Keep the int8 scheme whose exit agrees best with PyTorch on real images (chained)."""
    if data.verify_x is None:
        sch, cdir, art = candidates[0]
        notes.append(f"exit {e + 1}: {sch} (no real images to compare schemes)")
    else:
        scored, rejected = [], {}
        for sch, cdir, art in candidates:
            try:
                sess = open_sessions(t, tmp, graphs[: e + 1], [*chosen_artifacts, _moved(art, cdir, tmp)])
            except ExportError as ex:
                rejected[sch] = str(ex)
                scored.append((-1.0, -np.inf, sch, cdir, art))
                continue
            if sess is None:
                scored.append((0.0, 0.0, sch, cdir, art))
                continue
            partial = [*chosen_artifacts, _moved(art, cdir, tmp)]
            lg = chained(verification_bundle(model, t, exit_specs(model, graphs, partial, tmp), sess, tmp), data.verify_x, 1)[e]
            agree = float((lg.argmax(-1) == real_ref[e].argmax(-1)).mean() * 100)
            err = float(np.abs(lg - real_ref[e]).max())
            scored.append((agree, -err, sch, cdir, art))
        scored.sort(key=lambda s: (s[0], s[1]), reverse=True)
        if scored[0][0] < 0:
            raise ExportError(f"exit {e + 1}: no int8 scheme produced an artifact the runtime can run: {rejected}")
        _, _, sch, cdir, art = scored[0]
        notes.append(f"exit {e + 1}: " + ", ".join(f"{s[2]} {s[0]:.2f}% agreement (max|dlogit| {-s[1]:.3f})" if s[0] >= 0
                                                 else f"{s[2]} rejected ({rejected[s[2]]})" for s in scored) + f" -> {sch}")
    for name in [art.artifact, *art.extra_files]:
        shutil.move(str(cdir / name), str(tmp / name))
    for _, d, _ in candidates:
        if d != tmp:
            shutil.rmtree(d, ignore_errors=True)
    return sch, tmp, art


def _moved(art: ExitArtifact, src: Path, tmp: Path) -> ExitArtifact:
    """An artifact as seen from the bundle root (for scoring before it is moved there)."""
    return ExitArtifact(os.path.relpath(src / art.artifact, tmp), art.quantization, art.undelegated_ops, art.extra_files)
