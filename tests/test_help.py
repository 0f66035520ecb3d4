"""Every command's ``--help`` fits an 80-column terminal (the module docstrings shown as descriptions reached 147 columns),
and the rewrapping drops no word of them."""

from __future__ import annotations

import importlib
import re

import pytest

MAINS = ["dvt_edge.train", "dvt_edge.export.__main__", "dvt_edge.evaluate", "dvt_edge.bench", "dvt_edge.demo", "dvt_edge.zoo",
         "dvt_edge.data", "dvt_edge.model_card", "dvt_runtime.predict", "dvt_runtime.profile", "dvt_runtime.calibrate", "apps.webcam"]


def _help(main, argv, capsys) -> str:
    try:
        main(argv)
    except SystemExit as e:
        assert e.code in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize("module", MAINS)
def test_help_fits_80_columns_and_keeps_the_docstring(module, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    mod = importlib.import_module(module)
    text = _help(mod.main, ["--help"], capsys)
    body = text.split("\n\n", 1)[1]  # past argparse's usage block (a group it cannot split may run past 80)
    assert all(len(line) <= 80 for line in body.splitlines()), [line for line in body.splitlines() if len(line) > 80]
    doc = " ".join(w for w in re.split(r"\s+", mod.__doc__ or "") if w)
    described = re.split(r"\n(?:positional arguments|options):\n", body)[0]
    shown = " ".join(w for w in re.split(r"\s+", described) if w and w != "\\")
    assert doc.startswith(shown) or "description=__doc__" not in open(mod.__file__, encoding="utf-8").read(), (module, shown[:300])


@pytest.mark.parametrize("module", ["dvt_edge.cli", "dvt_runtime.cli"])
def test_the_command_lists_fit_80_columns(module, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    text = _help(importlib.import_module(module).main, ["--help"], capsys)
    assert "predict" in text and all(len(line) <= 80 for line in text.splitlines()), text
