"""``predict``'s answers as they come, in flat memory: each image's row spooled to disk (:class:`RowSpool`), the few numbers
the summary needs kept compactly (:class:`AnswerTally`), and the result's JSON written with the rows streamed from the
spool (:func:`result_json`), byte for byte what ``json.dumps(result, indent=2)`` writes of the rows in memory.

A folder of 20,000 CIFAR JPEGs had taken 195 MB at its peak (rows kept as dicts, about 4.8 KB an image: a million images
would have needed gigabytes), 113 MB spooled; the spool holds about half a KB an image on disk, the tally 50 bytes in memory.
"""

from __future__ import annotations

import json
import os
import tempfile
from array import array
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from dvt_runtime.stats import accuracy_interval

__all__ = ["RowSpool", "AnswerTally", "result_json"]


class RowSpool:
    """Rows (dicts) appended to a temporary JSON-lines file and read back in order; removed by :meth:`close` (or at exit
    of a ``with``). ``folder``: where the file goes (default the system's temporary folder)."""

    def __init__(self, folder: Union[str, Path, None] = None):
        fd, self.path = tempfile.mkstemp(prefix=".dvt-rows-", suffix=".jsonl", dir=folder)
        self._f = os.fdopen(fd, "w+", encoding="utf-8")
        self._n = 0

    def append(self, row: dict) -> None:
        self._f.write(json.dumps(row, allow_nan=False) + "\n")  # strict JSON: NaN is no answer
        self._n += 1

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[dict]:
        self._f.flush()
        with open(self.path, encoding="utf-8") as f:  # a reader of its own: appending may go on after
            for _, line in zip(range(self._n), f):
                yield json.loads(line)

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "RowSpool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AnswerTally:
    """Per answered image, the numbers predict's summary needs (exit, latencies, confidence, and with labels whether it
    was right), kept in typed arrays: a few dozen bytes an image, not a row's dict."""

    def __init__(self, num_exits: int) -> None:
        self.num_exits = num_exits
        self.exit = array("h")  # numbered from 1, as rows say
        self.total_ms, self.preprocess_ms, self.confidence = array("d"), array("d"), array("d")
        self.predict_ms = array("d")  # NaN where a row has none
        self.true_label, self.correct = array("i"), array("b")  # only with labels
        self.shares, self.shares_known = array("d"), array("b")  # each image's expected exit shares (E each), and whether known

    def __len__(self) -> int:
        return len(self.exit)

    def add(self, row: dict, shares: Optional[Sequence[float]]) -> None:
        """One answered image (its row, and where the calibration's images stopped under the thresholds it ran: None if
        unknown). Interrupted midway, :meth:`truncate` makes the arrays agree again."""
        self.total_ms.append(float(row["total_ms"]))
        self.preprocess_ms.append(float(row["preprocess_ms"]))
        self.confidence.append(float(row["confidence"]))
        self.predict_ms.append(float("nan") if row.get("predict_ms") is None else float(row["predict_ms"]))
        if "true_label" in row:
            self.true_label.append(int(row["true_label"]))
            self.correct.append(bool(row["correct"]))
        self.shares_known.append(shares is not None)
        if shares is not None:
            self.shares.extend(float(v) for v in shares)
        self.exit.append(int(row["exit"]))  # last: the image counts once every other array holds it

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` images (an interrupt between :meth:`add` and the row's own append leaves one too many,
        or an add half done)."""
        for a in (self.exit, self.total_ms, self.preprocess_ms, self.confidence, self.predict_ms, self.true_label, self.correct):
            del a[n:]
        del self.shares_known[n:]
        del self.shares[self.num_exits * sum(self.shares_known):]

    def exit_counts(self) -> list[int]:
        return np.bincount(np.asarray(self.exit, dtype=np.int64) - 1, minlength=self.num_exits).tolist() if len(self) else [0] * self.num_exits

    def expected_shares(self) -> Optional[list[float]]:
        """The mean of the images' expected exit shares; None when any was unknown, or no image was answered."""
        if not len(self) or not all(self.shares_known):
            return None
        return np.asarray(self.shares, dtype=np.float64).reshape(len(self), self.num_exits).mean(axis=0).tolist()

    def score(self, classes: Sequence[str], not_scored: int) -> Optional[dict]:
        """``predict --labels``' score of the answered images (None when none was): top-1 with its Wilson interval, per exit
        (of the images each answered) and per class. One pass of counts (a per-class scan of every row took K passes)."""
        if not len(self):
            return None
        ok = np.asarray(self.correct, dtype=np.int64)
        ex, truth = np.asarray(self.exit, dtype=np.int64) - 1, np.asarray(self.true_label, dtype=np.int64)
        assert ok.size == ex.size == truth.size  # every answered row was marked
        n, k = int(ex.size), int(ok.sum())
        top1 = 100.0 * k / n
        at, right = np.bincount(ex, minlength=self.num_exits), np.bincount(ex, weights=ok, minlength=self.num_exits)
        per_exit = [{"answered": int(a), "correct": int(c), "top1": 100.0 * int(c) / int(a) if a else None} for a, c in zip(at, right)]
        held, hit = np.bincount(truth, minlength=len(classes)), np.bincount(truth, weights=ok, minlength=len(classes))
        per_class = [{"class": classes[c], "label": c, "n": int(held[c]), "correct": int(hit[c]), "top1": 100.0 * int(hit[c]) / int(held[c])}
                     for c in np.flatnonzero(held).tolist()]
        return {"labels": "folders", "n": n, "correct": k, "top1": top1, "interval95": list(accuracy_interval(top1, n)),
                "not_scored": not_scored, "per_exit": per_exit, "per_class": per_class,
                "classes_absent": [c for i, c in enumerate(classes) if not held[i]]}


_MARK = "\x00dvt-rows\x00"  # stands for the streamed rows in the result's JSON text (no real value holds a NUL)


def result_json(result: dict[str, Any], key: str = "images") -> Iterator[str]:
    """``json.dumps(result, indent=2, allow_nan=False) + "\\n"`` in pieces, ``result[key]`` (any iterable of rows, e.g.
    a :class:`RowSpool`) streamed one row at a time."""
    rows: Iterable[dict] = result[key]
    text = json.dumps({**result, key: _MARK}, indent=2, allow_nan=False)
    before, after = text.split(json.dumps(_MARK), 1)
    yield before
    first = True
    for row in rows:  # each row as json.dumps nests it: two levels in, each of its lines indented by 4
        yield ("[\n" if first else ",\n") + "\n".join("    " + line for line in json.dumps(row, indent=2, allow_nan=False).splitlines())
        first = False
    yield "[]" if first else "\n  ]"
    yield after + "\n"
