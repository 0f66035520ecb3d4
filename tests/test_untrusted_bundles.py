"""Bundles and calibrations from a server the app does not fully trust: re-sealed by whoever changed them, so every
checksum of the manifest's own passes. What the runtime must still refuse before it parses, allocates or prints."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

from dvt_runtime.bundle import Bundle
from dvt_runtime.calibration import SCHEMA as CAL_SCHEMA
from dvt_runtime.calibration import SCHEMA_VERSION as CAL_VERSION
from dvt_runtime.calibration import CalibrationError
from dvt_runtime.console import quote_arg
from dvt_runtime.manifest import Manifest, ManifestError
from dvt_runtime.onnxfile import SCHEMA, MalformedOnnx, external_tensor
from dvt_runtime.preprocess import Preprocess
from dvt_runtime.schema import parse_json


@pytest.fixture()
def bundle(onnx_bundle, tmp_path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(onnx_bundle, dst)
    return dst


def _reseal(b: Path, change=None, text: str | None = None) -> None:
    """Change the manifest and seal it again, as a hostile server would (content_sha256 recomputed)."""
    d = json.loads((b / "manifest.json").read_text())
    if change:
        change(d)
    d.pop("content_sha256")
    d["content_sha256"] = hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()).hexdigest()
    (b / "manifest.json").write_text(text if text is not None else json.dumps(d))


def _set_artifact(d: dict, i: int, path: Path) -> None:
    d["exits"][i]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    d["exits"][i]["size_bytes"] = path.stat().st_size


def test_the_wire_reader_follows_every_path_to_a_tensor_in_onnx_s_own_schema(monkeypatch):
    """onnxfile reads protobuf without the onnx package (devices lack it): every field through which onnx.proto lets a
    message reach a TensorProto is one it follows (a hand-written list had missed FunctionProto's attribute defaults)."""
    kinds = {"onnx.ModelProto": "model", "onnx.TrainingInfoProto": "training", "onnx.FunctionProto": "function",
             "onnx.GraphProto": "graph", "onnx.NodeProto": "node", "onnx.AttributeProto": "attribute",
             "onnx.SparseTensorProto": "sparse", "onnx.TensorProto": "tensor"}
    seen, todo = {}, [onnx.ModelProto.DESCRIPTOR]
    while todo:  # every message reachable from ModelProto
        d = todo.pop()
        if d.full_name not in seen:
            seen[d.full_name] = d
            todo += [f.message_type for f in d.fields if f.message_type is not None]
    reach = {"onnx.TensorProto"}
    while True:  # the messages that can hold a TensorProto, however deep
        more = {n for n, d in seen.items() if any(f.message_type is not None and f.message_type.full_name in reach for f in d.fields)}
        if more <= reach:
            break
        reach |= more
    paths = {(n, f.number, f.message_type.full_name) for n in reach for f in seen[n].fields
             if f.message_type is not None and f.message_type.full_name in reach}
    assert {n for n, _, t in paths} | {t for _, _, t in paths} <= set(kinds)  # a new kind of message: the reader must know it
    assert {(kinds[n], num): kinds[t] for n, num, t in paths} == {(k, f): t for k, fields in SCHEMA.items() for f, t in fields.items()}
    for field, number in (("name", 8), ("external_data", 13), ("data_location", 14)):
        assert onnx.TensorProto.DESCRIPTOR.fields_by_name[field].number == number
    assert onnx.TensorProto.EXTERNAL == 1
    with pytest.raises(MalformedOnnx, match="field number 0"):
        external_tensor(bytes(4096))  # a file of zeros: not a model (it had been read a byte at a time, a 1 GB one for minutes)
    monkeypatch.setattr("dvt_runtime.onnxfile.MAX_FIELDS", 1000)
    with pytest.raises(MalformedOnnx, match="more than 1000 protobuf fields"):
        external_tensor(b"\x08\x01" * 1001)  # a billion tiny fields: bounded work


def _external(model: onnx.ModelProto, location: str) -> onnx.ModelProto:
    """``model`` with its largest initializer moved to external data at ``location``."""
    t = max(model.graph.initializer, key=lambda x: len(x.raw_data))
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "4")):
        e = t.external_data.add()
        e.key, e.value = k, v
    return model


@pytest.mark.parametrize("where", ["inside", "outside", "in_a_subgraph"])
def test_an_artifact_with_external_data_is_refused_before_onnx_runtime_reads_it(bundle, where):
    """No checksum covers an external data file, and older ONNX Runtime builds (>= 1.18 is allowed) read one named
    ``../../x`` or ``/abs/x`` anywhere on the device: a re-sealed bundle changed its weights, or read other files."""
    m = onnx.load(str(bundle / "exit1.onnx"))
    if where == "in_a_subgraph":  # a tensor inside an If node's branch: the reader walks attributes' graphs too
        w = onnx.numpy_helper.from_array(np.ones(3, np.float32), "w")
        w.ClearField("raw_data")
        w.data_location, e = onnx.TensorProto.EXTERNAL, w.external_data.add()
        e.key, e.value = "location", "w.bin"
        branch = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["w"], ["o"])], "g", [], [onnx.helper.make_tensor_value_info("o", 1, [3])], [w])
        m.graph.initializer.append(onnx.numpy_helper.from_array(np.array(True), "cond"))
        m.graph.node.append(onnx.helper.make_node("If", ["cond"], ["unused"], then_branch=branch, else_branch=branch))
    else:
        _external(m, "w.bin" if where == "inside" else "../../../../etc/hostname")
    onnx.save(m, str(bundle / "exit1.onnx"))
    (bundle / "w.bin").write_bytes(bytes(4))
    _reseal(bundle, lambda d: _set_artifact(d, 0, bundle / "exit1.onnx"))
    with pytest.raises(ManifestError, match=r"exit1\.onnx keeps tensor '.*' as external data .* re-export the bundle"):
        Bundle.open(bundle)


@pytest.mark.parametrize("name", ["exit1.ort", "exit1.bin"])
def test_external_data_is_found_whatever_the_artifacts_name(bundle, name):
    """ONNX Runtime tells ONNX from ORT format by content: an ONNX model named .ort or .bin had skipped the check."""
    m = _external(onnx.load(str(bundle / "exit1.onnx")), "w.bin")
    onnx.save(m, str(bundle / name))
    (bundle / "w.bin").write_bytes(bytes(4))

    def change(d):
        d["exits"][0]["artifact"] = name
        _set_artifact(d, 0, bundle / name)

    _reseal(bundle, change)
    with pytest.raises(ManifestError, match="as external data"):
        Bundle.open(bundle)


def test_tensors_hidden_where_only_onnx_runtime_looks_are_found():
    """A function's attribute defaults (FunctionProto field 11), and a tag of more than 32 bits (C++ protobuf keeps the
    low 32 bits: field 5 to ONNX Runtime, an unknown field to a 64-bit reader): both had hidden external data."""
    w = onnx.helper.make_tensor("w", onnx.TensorProto.FLOAT, [3], [0.0, 0.0, 0.0])
    w.ClearField("float_data")
    w.data_location, e = onnx.TensorProto.EXTERNAL, w.external_data.add()
    e.key, e.value = "location", "w.bin"
    ref = onnx.helper.make_node("Constant", [], ["o"])
    ref.attribute.append(onnx.AttributeProto(name="value", ref_attr_name="value", type=onnx.AttributeProto.TENSOR))
    fn = onnx.helper.make_function("local", "f", [], ["o"], [ref], [onnx.helper.make_opsetid("", 17)])
    fn.attribute_proto.append(onnx.helper.make_attribute("value", w))  # the tensor only as the attribute's default
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []), functions=[fn])
    assert external_tensor(model.SerializeToString()) == "w"
    node = onnx.helper.make_node("Constant", [], ["o"], value=w)
    data = onnx.helper.make_model(onnx.helper.make_graph([node], "g", [], [])).SerializeToString()
    assert external_tensor(data) == "w"
    attr = onnx.AttributeProto(name="value", type=onnx.AttributeProto.TENSOR)
    hidden = attr.SerializeToString() + b"\xaa\x80\x80\x80\x10" + _varint(len(w.SerializeToString())) + w.SerializeToString()
    plain = onnx.NodeProto(op_type="Constant", output=["o"]).SerializeToString()
    graph = _ld(1, plain + _ld(5, hidden))  # GraphProto.node, whose attribute t (5) is tagged with bit 32 set: 5 bytes
    with pytest.raises(MalformedOnnx, match="more than 32 bits"):
        external_tensor(_ld(7, graph))  # ModelProto.graph


def _varint(n: int) -> bytes:
    out = b""
    while True:
        out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            return out


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def test_a_cpu_session_holds_one_copy_of_its_model(bundle):
    """Loaded from the checked bytes, ONNX Runtime's wrapper kept them for the session's life (+100 MB for a 100 MB model)."""
    b = Bundle.open(bundle)
    assert all(s.sess._model_bytes is None for s in b.sessions)  # a CPU session is never rebuilt from them
    assert b.predict(np.zeros((28, 28), np.uint8)).exit >= 0


def test_an_artifact_overwritten_after_its_check_is_not_loaded(bundle, monkeypatch):
    """The artifact was hashed, then ONNX Runtime read the file again: one overwritten in between ran unchecked."""
    tampered = (bundle / "exit2.onnx").read_bytes()
    verify = Manifest.verify

    def verify_then_overwrite(self, bundle_dir):
        verify(self, bundle_dir)
        (Path(bundle_dir) / "exit1.onnx").write_bytes(tampered)  # a writer between the check and the load

    monkeypatch.setattr(Manifest, "verify", verify_then_overwrite)
    with pytest.raises(ManifestError, match=r"exit1\.onnx is \d+ bytes, not the \d+ exported|exit1\.onnx changed after"):
        Bundle.open(bundle)


@pytest.mark.parametrize("case,match", [
    ("dup_key", "key 'model' appears twice"),
    ("big_int", "is not valid JSON"),
    ("exits_17", "17 exits; a cascade has at most 16"),
    ("shared", "exits share an artifact"),
    ("shared_dot", "exits share an artifact"),
    ("chain", "exit 3's input features .* is not what exit 2 gives"),
    ("ansi_class", "class names hold control characters"),
    ("ansi_model", "model holds control characters"),
    ("nul_artifact", "holds control characters"),
    ("huge_side", "preprocess size must be a whole number of pixels in 1..4096"),
])
def test_a_resealed_manifest_that_would_crash_hang_or_print_escapes_is_refused(bundle, case, match):
    text = None
    raw = (bundle / "manifest.json").read_text()

    def change(d):
        if case == "exits_17":
            d["exits"] = [dict(d["exits"][0], index=i) for i in range(17)]
        elif case == "shared":
            d["exits"][2]["artifact"] = d["exits"][1]["artifact"]
        elif case == "shared_dot":  # the same file by another spelling
            d["exits"][2]["artifact"] = "./" + d["exits"][1]["artifact"]
        elif case == "chain":  # exit 3 takes what exit 2 gives with another token count
            next(t for t in d["exits"][2]["inputs"] if t["name"] == "features")["shape"][1] += 1
        elif case == "ansi_class":
            d["classes"][0] = "\x1b[2J\x1b[31mPWNED"
        elif case == "ansi_model":
            d["model"] = "m\x1b]0;title\x07"
        elif case == "nul_artifact":
            d["exits"][0]["artifact"] = "exit1.onnx\x00.txt"
        elif case == "huge_side":
            d["preprocess"]["size"] = d["preprocess"]["resize"] = 16384
            for e in d["exits"]:
                e["inputs"][0]["shape"][2:] = [16384, 16384]

    if case == "dup_key":
        text = raw.replace('"model":', '"model": "other", "model":', 1)
    elif case == "big_int":
        text = raw.replace('"max_batch": null', '"max_batch": ' + "9" * 5000, 1)
        assert text != raw
    _reseal(bundle, change, text)
    with pytest.raises(ManifestError, match=match) as e:
        Bundle.open(bundle)
    assert "\x1b" not in str(e.value) and "\x00" not in str(e.value)  # named, escaped


def test_a_manifest_far_too_large_is_refused_before_it_is_read(bundle):
    with open(bundle / "manifest.json", "r+b") as f:
        f.truncate(1 << 30)  # sparse: 1 GB that takes no disk (read whole, it had held 2 GB)
    with pytest.raises(ManifestError, match=r"manifest\.json is 1073741824 bytes, far more than a manifest's few KB"):
        Manifest.load(bundle, verify=False)


def test_preprocessing_is_bounded_and_bigger_models_are_refused_when_built():
    with pytest.raises(ValueError, match=r"1\.\.4096"):
        Preprocess(channels="gray", size=8192, resize=8192, mean=[0.5], std=[0.5])
    from dvt_edge.models import create_model

    with pytest.raises(ValueError, match="img_size"):
        create_model("dvt_micro_fmnist", img_size=8192)


def test_a_hostile_calibration_neither_prints_escapes_nor_slows_every_call(onnx_bundle, tmp_path):
    """A device name with escape sequences reached the terminal through the "rewrite it" command; a 200,000-row table
    made every budget-mode call scan it (25 to 55 ms a call for a 1 ms inference)."""
    from dvt_runtime.calibration import read_calibration

    b = tmp_path / "b"
    shutil.copytree(onnx_bundle, b)
    m = Manifest.load(b)
    base = {"schema": CAL_SCHEMA, "schema_version": CAL_VERSION, "bundle": {}, "profile": {"stages": []}, "table": [], "chosen": {},
            "budget_ms": 1.0}
    f = b / "calibration" / "laptop.json"
    f.parent.mkdir()
    f.write_text(json.dumps(dict(base, device="lap\x1b[2Jtop", table="x")))
    with pytest.raises(CalibrationError, match="field 'table' has the wrong type") as e:
        read_calibration(f, m)
    assert "\x1b" not in str(e.value) and r"--device-name $'lap\x1b[2Jtop'" in str(e.value)
    f.write_text('{"schema": "dvt-calibration", "schema": "x"}')
    with pytest.raises(CalibrationError, match="key 'schema' appears twice"):
        read_calibration(f, m)


def test_the_budget_table_and_device_names_are_bounded(onnx_bundle):
    from dvt_runtime.calibration import validate_calibration

    rows = [{"thresholds": [0.5, 0.5, None], "predicted": {"mean_ms": 1.0, "accuracy": 50.0}}]
    d = {"schema": CAL_SCHEMA, "schema_version": CAL_VERSION, "bundle": {}, "profile": {"stages": [{"mean": 1, "p90": 1}] * 3},
         "table": rows * 5000, "chosen": {"thresholds": [0.5, 0.5, None]}, "budget_ms": 1.0}
    with pytest.raises(CalibrationError, match="the budget table has 5000 rows"):
        validate_calibration(d)
    with pytest.raises(CalibrationError, match="without control characters"):
        validate_calibration(dict(d, table=rows, device="a\x9bb"))
    validate_calibration(dict(d, table=rows, device="Jetson Orin (25 W)"))


@pytest.mark.parametrize("text", ["a\x1b[2Jb", "it's\\x\x07", "\x85c1\u00e9\x7f", "tab\there"])
def test_a_printed_command_quotes_control_characters_so_they_paste_back_and_never_run(text):
    q = quote_arg(text)
    assert q.startswith("$'") and not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in q)
    if shutil.which("bash"):  # in a C locale too (containers, CI): \\u0085 had stayed literal text there
        for locale in ("C", "C.UTF-8"):
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": locale}
            assert subprocess.run(["bash", "-c", "printf %s " + q], capture_output=True, env=env).stdout == text.encode()


def test_duplicate_keys_are_named():
    assert parse_json('{"a": 1, "b": {"c": 2}}') == {"a": 1, "b": {"c": 2}}
    with pytest.raises(ValueError, match="key 'c' appears twice"):
        parse_json('{"a": 1, "b": {"c": 2, "c": 3}}')


def test_odd_inputs_keep_their_error_types(bundle):
    """A caller catching ManifestError / InputError had got a bare FileNotFoundError or OSError."""
    from PIL import Image

    from dvt_runtime.checks import InputError

    b = Bundle.open(bundle)
    img = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    assert b.predict(memoryview(img)).label == b.predict(img).label  # a memoryview of pixels is pixels, not a file
    Image.fromarray(img).resize((200, 200)).save(bundle / "p.jpg", quality=95)
    (bundle / "cut.jpg").write_bytes((bundle / "p.jpg").read_bytes()[:600])
    with pytest.raises(InputError, match="cannot decode the Pillow image"):
        b.predict(Image.open(bundle / "cut.jpg"))
    with pytest.raises(InputError, match="got a path|so a path"):
        b.predict(b"BMW_1.jpg")  # no NUL: a path, whatever its first letters
    (bundle / "exit3.onnx").unlink()
    with pytest.raises(ManifestError, match=r"exit3\.onnx is missing from the bundle"):
        Bundle.open(bundle, verify=False)
