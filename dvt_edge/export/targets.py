"""The table of deployment targets, read from the declarative recipes in ``export/*.toml``.

One table drives the CLI choices, validation, tests and benchmarks. Recipes ship inside
the wheel as ``dvt_edge.recipes`` (mapped from the top-level ``export/`` folder), and are
found in a source checkout too.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Optional

import tomllib  # Python 3.11+ (dvt-edge's floor: its pinned onnxruntime 1.32 has no 3.10 build)

from dvt_runtime.backends import BACKENDS

__all__ = ["Target", "TARGETS", "get_target", "TargetUnavailable", "recipe_dir"]


BATCH_MODES = ("static", "dynamic")


class TargetUnavailable(RuntimeError):
    """A target's toolchain is not installed; the message names the pip extra."""


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    module: str
    suffix: str
    backend: str
    extra: str
    requires: tuple[str, ...]
    precisions: tuple[str, ...]
    produces: str
    int8: dict = field(default_factory=dict, hash=False, compare=False)
    recipe: str = ""
    # batch axis of the exported exits: "dynamic" (any batch up to max_batch; 0 = unbounded)
    # or "static" (batch 1; the runtime loops over samples)
    batch: str = "static"
    max_batch: int = 1
    batch_note: str = ""
    # measured wall time of a 224 px export per precision, said before the long part (empty: said as not measured)
    minutes_224: dict = field(default_factory=dict, hash=False, compare=False)

    def missing_requirements(self) -> list[str]:
        return [r for r in self.requires if importlib.util.find_spec(r) is None]

    @property
    def available(self) -> bool:
        return not self.missing_requirements()

    def check_available(self) -> None:
        missing = self.missing_requirements()
        if missing:
            raise TargetUnavailable(
                f"target {self.name!r} needs {missing}, which is not installed. "
                f"Install it with: pip install 'dvt-edge[{self.extra}]'"
            )

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise ValueError(f"target {self.name!r} supports precisions {list(self.precisions)}, not {precision!r}")

    def check_etrecord(self, etrecord: bool) -> None:
        if etrecord and self.backend != "executorch":
            raise ValueError(f"--etrecord is ExecuTorch's (a debug record beside each .pte); target {self.name!r} has none: "
                             "export --target executorch with it, or leave it out")

    def load(self, precision: Optional[str] = None) -> ModuleType:
        """The exporter module (``export_exit(...)``) behind this recipe; with ``precision``, one it produces (a recipe listing
        fp16 for the ONNX exporter had written fp32 artifacts into a bundle labelled fp16)."""
        self.check_available()
        mod = importlib.import_module(self.module)
        if precision is not None and precision not in (made := getattr(mod, "PRECISIONS", (precision,))):
            raise ValueError(f"recipe {self.recipe}: its exporter {self.module} produces {list(made)}, not {precision!r}: "
                             f"list only those in its precisions")
        return mod


def recipe_dir() -> Path:
    """Where the recipes are: ``dvt_edge/recipes`` in an installed wheel, else the checkout's ``export/``."""
    here = Path(__file__).resolve().parents[1]  # .../dvt_edge
    for p in (here / "recipes", here.parent / "export"):
        if any(p.glob("*.toml")):
            return p
    raise FileNotFoundError(f"no export recipes found (looked in {here / 'recipes'} and {here.parent / 'export'})")


RECIPE_KEYS = {"name", "description", "module", "suffix", "backend", "extra", "precisions"}  # required in every recipe
RECIPE_OPTIONAL = {"requires", "produces", "int8", "batch", "max_batch", "batch_note", "minutes_224"}
RECIPE_PRECISIONS = ("fp32", "fp16", "int8")


def _recipe(f: Path, taken: dict[str, Target]) -> Target:
    """One recipe file as a Target; a ValueError naming the file and the fix for anything the export would trip on later
    (a copied recipe had failed with a bare KeyError, replaced the target it copied, or named a backend nothing runs)."""
    try:
        d = tomllib.loads(f.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"not valid TOML ({e})") from None
    if missing := sorted(RECIPE_KEYS - set(d)):
        raise ValueError(f"lacks {missing} (every recipe has {sorted(RECIPE_KEYS)})")
    if unknown := sorted(set(d) - RECIPE_KEYS - RECIPE_OPTIONAL):
        raise ValueError(f"unknown key(s) {unknown}; valid: {sorted(RECIPE_KEYS | RECIPE_OPTIONAL)}")
    if d["backend"] not in BACKENDS:  # what the runtime opens
        raise ValueError(f"backend {d['backend']!r} is none the runtime opens; valid: {list(BACKENDS)}")
    if bad := [q for q in d["precisions"] if q not in RECIPE_PRECISIONS]:
        raise ValueError(f"precision(s) {bad} are not known; valid: {list(RECIPE_PRECISIONS)}")
    if importlib.util.find_spec(d["module"]) is None:
        raise ValueError(f"module {d['module']!r} cannot be found (the exporter module with export_exit)")
    for table in ("int8", "minutes_224"):
        if not isinstance(d.get(table, {}), dict):
            raise ValueError(f"{table} must be a table ([{table}] and its keys below it), got {d[table]!r}")
    int8 = dict(d.get("int8", {}))
    if (ds := int8.get("default_scheme")) not in (None, "auto", *int8.get("schemes", [])):
        raise ValueError(f"int8 default_scheme {ds!r} is not one of its schemes {int8.get('schemes', [])} (or 'auto')")
    minutes = dict(d.get("minutes_224", {}))
    if bad := [k for k, v in minutes.items() if k not in (*d["precisions"], "measured_on") or not (isinstance(v, str) and v.strip())]:
        raise ValueError(f"minutes_224 {bad}: give a text per precision it lists ({list(d['precisions'])}), e.g. fp32 = \"about 2 "
                         "minutes\", and measured_on = \"the model and machine timed\"")
    if d["name"] in taken:
        raise ValueError(f"target name {d['name']!r} is already {taken[d['name']].recipe}'s: give the copy its own name")
    t = Target(
        name=d["name"], description=d["description"], module=d["module"], suffix=d["suffix"],
        backend=d["backend"], extra=d["extra"], requires=tuple(d.get("requires", ())),
        precisions=tuple(d["precisions"]), produces=d.get("produces", ""), int8=int8,
        recipe=f.name, batch=d.get("batch", "static"), max_batch=int(d.get("max_batch", 1 if d.get("batch", "static") == "static" else 0)),
        batch_note=d.get("batch_note", ""), minutes_224=minutes,
    )
    if t.batch not in BATCH_MODES or t.max_batch < 0 or (t.batch == "static" and t.max_batch != 1):
        raise ValueError(f"batch must be one of {list(BATCH_MODES)} (static means max_batch 1), got batch={t.batch!r} max_batch={t.max_batch}")
    return t


def _load_targets() -> dict[str, Target]:
    """Every recipe in :func:`recipe_dir`; one that cannot be used is left out and said, not the whole table."""
    out: dict[str, Target] = {}
    for f in sorted(recipe_dir().glob("*.toml")):
        try:
            t = _recipe(f, out)
        except ValueError as e:
            print(f"warning: export recipe {f} left out: {e}", file=sys.stderr)
            continue
        out[t.name] = t
    return out


TARGETS: dict[str, Target] = _load_targets()


def get_target(name: str) -> Target:
    if name not in TARGETS:
        close = difflib.get_close_matches(name, list(TARGETS), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown target {name!r}; valid targets: {sorted(TARGETS)}.{hint}")
    return TARGETS[name]
