"""The table of deployment targets, read from the declarative recipes in ``export/*.toml``.

One table drives the CLI choices, validation, tests and benchmarks. Recipes ship inside
the wheel as ``dvt_edge.recipes`` (mapped from the top-level ``export/`` folder), and are
found in a source checkout too.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

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

    def load(self) -> ModuleType:
        """The exporter module (``export_exit(...)``) behind this recipe."""
        self.check_available()
        return importlib.import_module(self.module)


def recipe_dir() -> Path:
    """Where the recipes are: ``dvt_edge/recipes`` in an installed wheel, else the checkout's ``export/``."""
    here = Path(__file__).resolve().parents[1]  # .../dvt_edge
    for p in (here / "recipes", here.parent / "export"):
        if any(p.glob("*.toml")):
            return p
    raise FileNotFoundError(f"no export recipes found (looked in {here / 'recipes'} and {here.parent / 'export'})")


def _load_targets() -> dict[str, Target]:
    out = {}
    for f in sorted(recipe_dir().glob("*.toml")):
        d = tomllib.loads(f.read_text())
        t = Target(
            name=d["name"], description=d["description"], module=d["module"], suffix=d["suffix"],
            backend=d["backend"], extra=d["extra"], requires=tuple(d.get("requires", ())),
            precisions=tuple(d["precisions"]), produces=d.get("produces", ""), int8=dict(d.get("int8", {})),
            recipe=f.name, batch=d.get("batch", "static"), max_batch=int(d.get("max_batch", 1 if d.get("batch", "static") == "static" else 0)),
            batch_note=d.get("batch_note", ""),
        )
        if t.batch not in BATCH_MODES or t.max_batch < 0 or (t.batch == "static" and t.max_batch != 1):
            raise ValueError(f"{f.name}: batch must be one of {list(BATCH_MODES)} (static means max_batch 1), "
                             f"got batch={t.batch!r} max_batch={t.max_batch}")
        out[t.name] = t
    return out


TARGETS: dict[str, Target] = _load_targets()


def get_target(name: str) -> Target:
    if name not in TARGETS:
        close = difflib.get_close_matches(name, list(TARGETS), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown target {name!r}; valid targets: {sorted(TARGETS)}.{hint}")
    return TARGETS[name]
