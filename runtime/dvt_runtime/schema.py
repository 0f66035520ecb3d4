"""One ``from_dict`` discipline for every typed file that crosses a boundary.

Manifest, latency profile, calibration and parity report are dataclasses that round-trip to
JSON. Reading one: it must be an object; its ``schema_version`` (where the type has one) an
integer no newer than this dvt-runtime; every field without a default present; and no key
the type does not know (a typo or a file of another kind, named in the error with the
valid keys). Unknown keys are refused rather than dropped, so a field added to a type must
come with a ``schema_version`` bump: an older runtime then says "upgrade" instead of "unknown field".
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable


def newer_message(what: str, version: int, current_version: int, form: str = "schema_version {}") -> str:
    """Why a file of a newer format is refused, and the one fix (rewriting it with this older runtime would lose what the
    newer format holds). ``form``: how the file names its version (e.g. ``"dvt-etdump-runs/{}"``)."""
    from dvt_runtime import __version__

    return (f"{what} {form.format(version)} is newer than this dvt-runtime {__version__} understands "
            f"({form.format(current_version) if form != 'schema_version {}' else current_version}); "
            "upgrade dvt-runtime from a dvt-edge checkout at least as new as the one that wrote it (pip install -U ./runtime; "
            "it is not on a package index), and do not rewrite the file with this one")


def checked_fields(cls, d: Any, what: str, error: Callable[[str], Exception], current_version: int | None = None) -> dict:
    """``d``'s fields for ``cls(**...)`` after the checks above; raises ``error(message)``."""
    if not isinstance(d, dict):
        raise error(f"{what} must be a JSON object, got {type(d).__name__}")
    if current_version is not None:
        v = d.get("schema_version")
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise error(f"not a dvt {what}: it has no integer schema_version >= 1 (got {v!r})")
        if v > current_version:
            raise error(newer_message(what, v, current_version))
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    missing = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in d]
    if missing:
        raise error(f"{what} lacks required field(s) {missing}")
    unknown = sorted(k for k in d if k not in names)
    if unknown:
        raise error(f"{what} has unknown field(s) {unknown}; valid: {names}")
    return dict(d)


def parse_json(text: str) -> Any:
    """``json.loads``, refusing what another reader of the same file could read otherwise: an object holding a key twice
    (Python keeps the last, others the first, so a check and a device could see different values). A ValueError
    (``json.JSONDecodeError`` for bad syntax; a number of more than 4,300 digits is Python's own)."""
    import json

    def unique(pairs: list) -> dict:
        d = dict(pairs)
        if len(d) != len(pairs):
            seen: set = set()
            twice = next(k for k, _ in pairs if k in seen or seen.add(k))
            raise ValueError(f"key {twice!r} appears twice in one object")
        return d

    return json.loads(text, object_pairs_hook=unique)


def printable(text: str) -> bool:
    """No control characters (C0, DEL, C1): a name read from a file and printed must not run ``\x1b[2J`` and the like in
    the user's terminal."""
    return not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text)
