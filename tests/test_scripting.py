"""Traps for scripts and Makefiles that wrap every command alike (a platform engineer's review): an output path that is
another file of the user's, ``--out -`` where only ``predict`` writes to standard output, one ``DATA=`` for the host's
and the device's ``--data``."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from dvt_edge.data import DataError, export_npz, load_dataset
from dvt_edge.data import main as data_main
from dvt_runtime.calibrate import main as calibrate_main
from dvt_runtime.profile import main as profile_main
from dvt_runtime.vectors import main as vectors_main


def test_vectors_never_replaces_a_file_it_did_not_write(onnx_bundle, tmp_path, capsys):
    """``vectors --out B/exit1.onnx`` had overwritten the bundle's own model (exit 0, 'wrote ...'): then every predict
    failed its SHA-256 check. A file vectors did not write is refused; an earlier vectors file is replaced."""
    b = tmp_path / "b"
    shutil.copytree(onnx_bundle, b)
    img = tmp_path / "x.png"
    cv2.imwrite(str(img), np.full((28, 28), 90, np.uint8))
    before = (b / "exit1.onnx").read_bytes()
    assert vectors_main(["--bundle", str(b), "--out", str(b / "exit1.onnx"), "--no-progress", str(img)]) == 2
    assert "exists and is not an earlier result (it would be replaced)" in capsys.readouterr().err
    assert (b / "exit1.onnx").read_bytes() == before
    out = tmp_path / "v.npz"
    for _ in range(2):  # its own earlier file: replaced
        assert vectors_main(["--bundle", str(b), "--out", str(out), "--no-progress", str(img)]) == 0
    assert np.load(out)["input"].shape == (1, 1, 28, 28)


def test_out_dash_is_refused_where_it_is_not_standard_output(onnx_bundle, tmp_path, monkeypatch, capsys):
    """``profile --out -``, ``vectors --out -``, ``data export --out -`` and the webcam's ``--stats -`` wrote a file named
    '-' in the current folder (exit 0) where a pipe's reader waited: refused, exit 2, nothing written."""
    from apps import webcam

    monkeypatch.chdir(tmp_path)
    img = tmp_path / "x.png"
    cv2.imwrite(str(img), np.full((28, 28), 90, np.uint8))
    assert profile_main(["--bundle", str(onnx_bundle), "--out", "-", "--runs", "20"]) == 2
    assert vectors_main(["--bundle", str(onnx_bundle), "--out", "-", str(img)]) == 2
    assert capsys.readouterr().err.count("standard output is not a file this command writes (only predict's --out - is)") == 2
    assert data_main(["export", "--data", "fashion-mnist", "--split", "val", "--n", "10", "--out", "-"]) == 2
    assert "--out -: standard output cannot take an .npz" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        webcam.parse_args(["--bundle", str(onnx_bundle), "--video", str(img), "--stats", "-"])
    assert e.value.code == 2 and "standard output is not a file the webcam writes" in capsys.readouterr().err
    assert not (tmp_path / "-").exists()


def test_one_data_spelling_serves_host_and_device(onnx_bundle, tmp_path, capsys):
    """``calibrate --data npz:val.npz`` (the host's spec) said 'not found'; ``--data val.npz`` on the host said only
    'unknown dataset spec'."""
    ds = load_dataset("fashion-mnist", "val").limit(60, seed=0)
    export_npz(ds, tmp_path / "val.npz")
    assert calibrate_main(["--bundle", str(onnx_bundle), "--data", f"npz:{tmp_path / 'val.npz'}", "--budget-ms", "50",
                           "--device-name", "box", "--calibration-dir", str(tmp_path / "cal"), "--runs", "20", "--no-progress"]) == 0
    assert (tmp_path / "cal" / "box.json").is_file()
    with pytest.raises(DataError, match=rf"unknown dataset spec .*\(an \.npz file: npz:{tmp_path / 'val.npz'}\)"):
        load_dataset(str(tmp_path / "val.npz"), "val")


EVERY_COMMAND = [
    ("dvt_edge.train", []), ("dvt_edge.export.__main__", []), ("dvt_edge.evaluate", []), ("dvt_edge.data", ["export"]),
    ("dvt_edge.bench", []), ("dvt_edge.demo", []), ("dvt_edge.model_card", []), ("dvt_runtime.predict", []),
    ("dvt_runtime.profile", []), ("dvt_runtime.profile", ["import"]), ("dvt_runtime.calibrate", []), ("dvt_runtime.vectors", []),
    ("apps.webcam", []), ("dvt_edge.data", ["info"]), ("dvt_edge.zoo", []), ("dvt_edge.bench", ["report"]),
]


@pytest.mark.parametrize("module, args", EVERY_COMMAND)
def test_every_command_takes_no_progress(module, args, capsys):
    """A script passing ``--no-progress`` to every command alike: the webcam and ``profile import`` (which draw no bar)
    stopped it with 'unrecognized arguments'."""
    import importlib

    with pytest.raises(SystemExit) as e:
        importlib.import_module(module).main([*args, "--help"])
    assert e.value.code == 0 and "--no-progress" in capsys.readouterr().out


@pytest.mark.parametrize("module, args", EVERY_COMMAND)
def test_no_command_takes_an_abbreviated_option(module, args, monkeypatch, capsys):
    """argparse took an option's prefix (``bench --target`` for ``--targets``): a script's abbreviation breaks, or changes
    meaning, once a later version adds an option that begins alike. Every parser a command builds takes options only as
    spelled in full."""
    import argparse
    import importlib

    seen = []
    real = argparse.ArgumentParser.parse_known_args

    def spy(self, *a, **k):
        seen.append(self)
        return real(self, *a, **k)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", spy)
    with pytest.raises(SystemExit):
        importlib.import_module(module).main([*args, "--help"])
    assert seen and all(p.allow_abbrev is False for p in seen)
    ap = seen[-1]
    longest = max((o for a in ap._actions for o in a.option_strings), key=len)  # e.g. --no-progress
    assert ap._parse_optional(longest[:-2]) is not None and ap._parse_optional(longest[:-2])[0] is None  # not an abbreviation


def test_an_unknown_option_is_told_the_closest(capsys):
    """What a script's abbreviation now hears, and the spellings each side of export / bench used to differ on."""
    from dvt_edge.bench import main as bench_main
    from dvt_edge.export.__main__ import build_parser
    from dvt_runtime.cli import Parser

    ap = Parser(prog="x")
    ap.add_argument("--targets")
    with pytest.raises(SystemExit) as e:
        ap.parse_args(["--target", "onnx", "--thredas", "1"])
    assert e.value.code == 2 and "(did you mean: --target -> --targets?)" in capsys.readouterr().err
    a = build_parser().parse_args(["--data", "cifar10-ref", "--precisions", "int8"])  # bench's and the runtime's spelling
    assert (a.calib_data, a.precision) == ("cifar10-ref", "int8")
    # export's spelling on bench, in full: parsed (the refusal is of --threads 0, checked after parsing)
    assert bench_main(["--target", "onnx", "--precision", "fp32", "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert "unrecognized" not in err and "--threads must be >= 1" in err
    from dvt_edge.data import main as data_main
    from dvt_runtime.predict import main as predict_main

    for main_, argv, said in (
            (predict_main, ["--bud", "2", "--bundle", "b", "x.jpg"], "--bud -> --budget-ms"),  # what the abbreviation meant
            (predict_main, ["--bundel", "b", "x.jpg"], "--bundel -> --bundle"),  # a required option's typo
            (data_main, ["export", "--out", "o.npz", "--dta", "x"], "--dta -> --data")):  # a sub-command's option
        with pytest.raises(SystemExit):
            main_(argv)
        assert said in capsys.readouterr().err
