"""The API in a notebook: ``sys.stdout``/``sys.stderr`` are the kernel's streams (no file descriptor: what C++ prints never
reaches the cell, what Python prints does), an Interrupt can land in any call, and a cell's last value is shown by its repr."""

from __future__ import annotations

import importlib
import io
import logging
import os
import sys

import numpy as np
import pytest

from dvt_runtime.console import held_output, on_descriptor


class CellStream(io.TextIOBase):
    """What ipykernel's OutStream is to a library: text goes to the cell; ``fileno()`` raises."""

    def __init__(self):
        self.text = ""

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def fileno(self) -> int:
        raise io.UnsupportedOperation("fileno")


def test_toolchain_chatter_is_held_from_a_notebooks_cell(monkeypatch, capfd):
    cell = CellStream()
    monkeypatch.setattr(sys, "stderr", cell)
    assert not on_descriptor(cell, 2) and on_descriptor(sys.__stdout__, 1)
    with held_output():
        print("Failed to load torchao/_C_mxfp8.so", file=sys.stderr)  # a library's print, as torchao's
        handler = logging.StreamHandler()  # torch's logging handler, made on its first import inside the block
        handler.stream.write("W1207 pytree notice\n")
        os.write(2, b"[cpuinfo_utils.cpp:71] probing\n")  # C++ on the descriptor
    assert sys.stderr is cell and cell.text == "", cell.text  # none of it in the cell
    handler.stream.write("a later torch warning\n")  # the handler made inside still writes to the cell afterwards
    assert cell.text == "a later torch warning\n"
    capfd.readouterr()  # (descriptor 2 is pytest's file here: a log, which keeps the record)
    with pytest.raises(RuntimeError):
        with held_output():
            print("the toolchain's own words", file=sys.stderr)
            raise RuntimeError("load failed")
    assert "the toolchain's own words" in cell.text  # a failure shows them, in the cell


def test_an_export_log_keeps_the_notebooks_progress_in_the_cell(monkeypatch, tmp_path):
    from dvt_edge.logs import quiet_toolchains

    cell = CellStream()
    monkeypatch.setattr(sys, "stderr", cell)
    with quiet_toolchains(tmp_path / "x.log") as console:
        print("toolchain line", file=sys.stderr)
        console.write("progress 50%\n")
    assert console is cell and "progress 50%" in cell.text and "toolchain line" not in cell.text
    assert "toolchain line" in (tmp_path / "x.log").read_text()


def test_an_import_interrupted_earlier_says_restart_not_reinstall(monkeypatch):
    from dvt_runtime import backends

    calls = []

    def import_module(name):
        calls.append(name)
        if len(calls) == 1:
            raise KeyboardInterrupt  # the notebook's Interrupt during the first, slow import
        raise AttributeError("partially initialized module 'executorch.exir' has no attribute 'memory' (most likely due to a "
                             "circular import)")

    monkeypatch.setattr(backends, "_INTERRUPTED", set())
    monkeypatch.setattr(importlib, "import_module", import_module)
    with pytest.raises(KeyboardInterrupt):
        backends.import_backend("executorch")
    with pytest.raises(backends.BackendUnavailable, match=r"importing torch \(the executorch backend's library\) was interrupted "
                                                          r"earlier in this process .*restart the interpreter \(in a notebook, the kernel\)"):
        backends.import_backend("executorch")
    monkeypatch.setattr(backends, "_INTERRUPTED", set())  # never interrupted: a library's own error is its own
    with pytest.raises(AttributeError, match="partially initialized"):
        backends.import_backend("executorch")


def test_what_a_cell_shows_is_a_summary_not_a_dump(onnx_bundle, micro_ckpt, tmp_path):
    """A cell ending in a profile showed 44 KB (every raw sample), a calibration 11 KB, an export's result its whole
    manifest, and each prediction its softmax array."""
    from dvt_edge.data import load_dataset
    from dvt_edge.export import export_bundle
    from dvt_runtime.bundle import Bundle
    from dvt_runtime.calibrate import calibrate
    from dvt_runtime.profile import profile_bundle

    b = Bundle.open(onnx_bundle, device_name="", calibration_dir=tmp_path / "cal")  # the shared bundle is left alone
    prof = profile_bundle(b, runs=40, warmup=2, progress=False)
    text = repr(prof)
    assert len(text) < 300 and text.startswith(f"LatencyProfile({b.manifest.model} onnx/fp32 on ") and "mean ms to each exit" in text, text
    ds = load_dataset("fashion-mnist", "val", limit=40, seed=1)
    cal = calibrate(b, b.preprocess(ds.images[:, :, :, None]), ds.labels, 1e6, profile=prof, progress=False)
    text = repr(cal)
    assert len(text) < 400 and text.startswith(f"Calibration(device {cal.device!r}, ") and "thresholds [" in text, text
    p = b.predict(np.zeros((28, 28), np.uint8))
    assert "probs" not in repr(p) and repr(p).startswith(f"Prediction(label={p.label}, class_name="), repr(p)
    r = export_bundle(str(micro_ckpt), "onnx", "fp32", out=str(tmp_path / "e"), verify_n=20, progress=False)
    assert repr(r) == f"ExportResult({str(r.path)!r}, {r.manifest.model} onnx/fp32, 3 exits, check numerical, passed)", repr(r)
