"""``dvt-runtime vectors``: what a port of the cascade to an app's own code checks itself against, and the README's porting
rules (decode, geometry, pixels, cascade) followed by a port that uses numpy, OpenCV and onnxruntime only."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnxruntime as ort

from dvt_runtime.vectors import main


def _port(bundle, path) -> tuple[np.ndarray, list[np.ndarray], int, int, float]:
    """The cascade on one image file from the manifest and the README's rules alone: (input, logits per exit, exit, label, conf)."""
    m = json.loads((bundle / "manifest.json").read_text())
    pre = m["preprocess"]
    img = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)  # EXIF applied, alpha dropped, gray kept
    if pre["channels"] == "gray" and img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    h, w = img.shape[:2]
    r, size = pre["resize"], pre["size"]
    nh, nw = (r, int(r * w / h)) if h <= w else (int(r * h / w), r)  # the longer side floored
    top, left = round((nh - size) / 2), round((nw - size) / 2)  # half to even
    inter = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}[pre["interpolation"]]
    img = cv2.resize(img, (nw, nh), interpolation=inter) if (nh, nw) != (h, w) else img
    img = img[top:top + size, left:left + size].reshape(size, size, -1)
    x = img.astype(np.float32) * np.float32(1 / 255)
    x = 1 - x if pre.get("invert") else x
    x = ((x - np.float32(pre["mean"])) / np.float32(pre["std"])).transpose(2, 0, 1)[None]  # (1, C, H, W)
    feeds, logits, answer = {}, [], None
    for k, e in enumerate(m["exits"]):
        sess = ort.InferenceSession(str(bundle / e["artifact"]), providers=["CPUExecutionProvider"])
        out = dict(zip([t["name"] for t in e["outputs"]], sess.run([t["name"] for t in e["outputs"]],
                                                                  {"image": x, **feeds})))
        feeds = {n[: -len("_out")]: v for n, v in out.items() if n.endswith("_out")}
        logits.append(out["logits"][0])
        p = np.exp(out["logits"][0].astype(np.float64) - out["logits"][0].max())
        p /= p.sum()
        thr = m["thresholds"][k] if k < len(m["exits"]) - 1 else None
        if answer is None and (k == len(m["exits"]) - 1 or (thr is not None and p.max() >= thr)):
            answer = (k + 1, int(p.argmax()), float(p.max()))
    return (x[0], logits, *answer)


def test_vectors_hold_what_a_port_following_the_readme_computes(onnx_bundle, tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(4)
    files = []
    for i, (h, w) in enumerate([(28, 28), (30, 33), (45, 29), (61, 64), (33, 30)]):  # odd sizes: floors and half-to-even crops
        f = tmp_path / f"{i}.png"
        cv2.imwrite(str(f), rng.integers(0, 256, (h, w), dtype=np.uint8))
        files.append(f)
    import dvt_runtime.console as C

    real, bars = C.progress, []
    monkeypatch.setattr(C, "progress", lambda it, **k: (bars.append((k["desc"], k["enabled"])), real(it, **k))[1])  # a bar over
    assert main(["--bundle", str(onnx_bundle), "--out", str(tmp_path / "v.npz"), *map(str, files)]) == 0  # the decoding
    assert main(["--bundle", str(onnx_bundle), "--out", str(tmp_path / "v.npz"), "--no-progress", *map(str, files)]) == 0
    assert bars == [("vectors", True), ("vectors", False)] and "wrote" in capsys.readouterr().out
    v = np.load(tmp_path / "v.npz")  # no pickled objects
    assert list(v["files"]) == [str(f) for f in files] and v["input"].dtype == np.float32
    for i, f in enumerate(files):
        x, logits, exit_, label, conf = _port(onnx_bundle, f)
        assert np.array_equal(x, v["input"][i])  # bit for bit: the documented arithmetic
        for e, lg in enumerate(logits):
            assert np.allclose(lg, v[f"logits_exit{e + 1}"][i], atol=1e-5)
        assert (exit_, label) == (v["exit"][i], v["label"][i]) and np.isfinite(conf) and abs(conf - v["confidence"][i]) < 1e-6


def test_vectors_name_an_unreadable_image(onnx_bundle, tmp_path, capsys):
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    assert main(["--bundle", str(onnx_bundle), "--out", str(tmp_path / "v.npz"), str(tmp_path / "x.png")]) == 2
    assert "x.png" in capsys.readouterr().err and not (tmp_path / "v.npz").exists()


def test_vectors_beside_this_hosts_calibration_say_so_in_its_own_terms(onnx_bundle, tmp_path, capsys, monkeypatch):
    """With this host's calibration in the bundle, vectors (which record the manifest's thresholds) passed on the API's
    warning, naming Bundle.open(..., device_name=...), which the command has no flag for: a note in its terms instead."""
    import shutil
    import warnings

    import dvt_runtime.device as D

    b = tmp_path / "b"
    shutil.copytree(onnx_bundle, b)
    (b / "calibration").mkdir(exist_ok=True)
    monkeypatch.setattr(D, "this_host", lambda: "vm")
    (b / "calibration" / "vm.json").write_text("{}")  # its presence is what is said (its content is never read here)
    img = tmp_path / "i.png"
    cv2.imwrite(str(img), np.full((28, 28), 120, np.uint8) + np.arange(28, dtype=np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["--bundle", str(b), "--out", str(tmp_path / "v.npz"), str(img), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "Bundle.open" not in err and "this host's calibration" in err and "pass --thresholds" in err
    assert main(["--bundle", str(b), "--out", str(tmp_path / "v.npz"), str(img), "--thresholds", "0.5,0.5", "--no-progress"]) == 0
    assert "calibration" not in capsys.readouterr().err
