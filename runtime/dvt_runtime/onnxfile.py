"""What an ONNX file refers to outside itself: tensors stored as external data (``location`` names another file,
which ONNX Runtime reads beside the model, or anywhere on older builds). The exporter writes none, and no checksum
covers such a file, so a bundle's artifact holding one is refused before ONNX Runtime parses it.

A reader of protobuf's wire format over the few messages that can hold a tensor (no ``onnx`` package on devices)."""

from __future__ import annotations

from typing import Iterator, Optional

__all__ = ["MalformedOnnx", "external_tensor"]

# message -> {field number: message type of that field}, from onnx.proto (checked against onnx's descriptors in the tests)
SCHEMA: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node", 11: "attribute"},  # 11: attribute_proto, the defaults of its attributes
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {},
}
TENSOR_NAME, EXTERNAL_DATA, DATA_LOCATION, EXTERNAL = 8, 13, 14, 1  # TensorProto fields; DataLocation.EXTERNAL
MAX_DEPTH = 64  # graphs inside attributes inside graphs: far deeper than any model
MAX_FIELDS = 2_000_000  # the CIFAR reference's last exit has about 10,000


class MalformedOnnx(ValueError):
    """Bytes that are not a well-formed protobuf of the messages read."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise MalformedOnnx("a varint runs past the end")
        b = buf[pos]
        value |= (b & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not b & 0x80:
            return value, pos


def _fields(buf: memoryview, budget: list[int]) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value): an int for varints, a memoryview for length-delimited fields. ``budget``: the
    fields still to be read in the whole file (a real model has tens of thousands; a hostile file, a billion)."""
    pos = 0
    while pos < len(buf):
        budget[0] -= 1
        if budget[0] < 0:
            raise MalformedOnnx(f"more than {MAX_FIELDS} protobuf fields")
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:  # no message has a field 0: zeros, or not protobuf at all
            raise MalformedOnnx(f"field number 0 at byte {pos}")
        if key > 0xFFFFFFFF:  # C++ protobuf (ONNX Runtime's) reads tags as 32 bits: the bits above would hide a field here
            raise MalformedOnnx(f"a tag of more than 32 bits at byte {pos}")
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise MalformedOnnx("a field runs past the end")
            value, pos = buf[pos:pos + n], pos + n
        elif wire in (1, 5):
            value, pos = None, pos + (8 if wire == 1 else 4)
        else:
            raise MalformedOnnx(f"wire type {wire}")
        yield field, wire, value


def external_tensor(data: bytes) -> Optional[str]:
    """The name of the first tensor in the ONNX model ``data`` stored as external data (or "?" when it has no name),
    else None. Raises :class:`MalformedOnnx` for bytes that are not a protobuf ModelProto."""
    stack, budget = [("model", memoryview(data), 0)], [MAX_FIELDS]
    while stack:
        kind, buf, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise MalformedOnnx(f"graphs nested more than {MAX_DEPTH} deep")
        name, external = "?", False
        for field, wire, value in _fields(buf, budget):
            if kind == "tensor":
                if field == TENSOR_NAME and wire == 2:
                    name = bytes(value).decode("utf-8", "replace")  # type: ignore[arg-type]
                external = external or (field == EXTERNAL_DATA and wire == 2) or (
                    field == DATA_LOCATION and wire == 0 and value & 0xFFFFFFFF == EXTERNAL)  # an enum: 32 bits in C++
            elif wire == 2 and field in SCHEMA[kind]:
                stack.append((SCHEMA[kind][field], value, depth + 1))
        if external:
            return name
    return None
