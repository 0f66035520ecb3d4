"""Every command the README shows uses options its command has: a renamed or removed flag left in the README fails here,
not in a user's terminal. Each ``python -m dvt_edge...`` / ``dvt_runtime...`` / ``dvt-runtime`` line (continuations
joined) is checked against that command's ``--help``."""

from __future__ import annotations

import contextlib
import importlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SUBCOMMANDS = {"dvt_edge": ("train", "evaluate", "export", "bench", "demo", "zoo", "webcam", "model_card", "data"),
               "dvt_runtime": ("predict", "profile", "calibrate", "info", "vectors"), "dvt_edge.data": ("export", "info"),
               "dvt_runtime.profile": ("import",)}
ENTRY = {"dvt_edge": "dvt_edge.__main__", "dvt_runtime": "dvt_runtime.cli", "dvt_edge.export": "dvt_edge.export.__main__"}


FLAG = r"(?<![\w-])(--[a-z][a-z0-9-]*)"


def commands(text: str) -> list[tuple[str, str]]:
    """(module, arguments) of every command line in ``text``."""
    text = text.replace("\\\n", " ")
    found = re.findall(r"(?:python -m|torchrun [^`\n]*?-m) (dvt_edge(?:\.\w+)*|dvt_runtime(?:\.\w+)*|apps\.webcam)([^`\n|;&#]*)", text)
    return found + [("dvt_runtime", " " + a) for a in re.findall(r"dvt-runtime((?: [^`\n|;&#]*)?)", text)]


def help_text(module: str, sub: str | None) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()), contextlib.suppress(SystemExit):
        importlib.import_module(ENTRY.get(module, module)).main([*([sub] if sub else []), "--help"])
    return out.getvalue()


def unknown_options(text: str) -> set[tuple[str, str, str]]:
    bad, helps = set(), {}
    for module, rest in commands(text):
        words = rest.split()
        sub = words[0] if words and words[0] in SUBCOMMANDS.get(module, ()) else None
        if sub and words[1:2] and words[1] in SUBCOMMANDS.get(f"{module}.{sub}", ()):  # dvt-runtime profile import
            module, sub = f"{module}.{sub}", words[1]
        h = helps.setdefault((module, sub), help_text(module, sub))
        known = set(re.findall(FLAG, h))  # whole options: a prefix is no longer taken (argparse's abbreviations are off)
        bad |= {(module, sub or "", flag) for flag in re.findall(FLAG, rest) if flag not in known}
    return bad


def test_every_option_the_readme_shows_exists():
    text = README.read_text(encoding="utf-8")
    assert len(commands(text)) > 100  # the README's commands were found
    assert unknown_options(text) == set()
    runtime_readme = (README.parent / "runtime" / "README.md").read_text(encoding="utf-8")  # dvt-runtime's page on PyPI
    assert len(commands(runtime_readme)) > 5 and unknown_options(runtime_readme) == set()
    # and a flag that does not exist is caught, in a code block and inline, with its subcommand
    assert unknown_options("```\npython -m dvt_edge.train --epochz 3 \\\n    --out x\n```\n`dvt-runtime calibrate --budgetms 1`"
                           " `dvt-runtime predict --budget 1` `dvt-runtime profile import --cvs x`") == {
        ("dvt_edge.train", "", "--epochz"), ("dvt_runtime", "calibrate", "--budgetms"), ("dvt_runtime", "predict", "--budget"),
        ("dvt_runtime.profile", "import", "--cvs")}
