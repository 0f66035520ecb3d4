"""``predict``'s answers as they come, in flat memory, and its table: each image's row spooled to disk (:class:`RowSpool`), the few numbers
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

from dvt_runtime.console import shown
from dvt_runtime.scoring import accuracy_lines
from dvt_runtime.search import check_metric
from dvt_runtime.stats import accuracy_interval, percentile

__all__ = ["RowSpool", "AnswerTally", "result_json", "budget_verdict", "format_result", "result_lines"]


class RowSpool:
    """Rows (dicts) appended to a temporary JSON-lines file and read back in order; removed by :meth:`close` (or at exit
    of a ``with``). ``folder``: where the file goes (default the system's temporary folder)."""

    def __init__(self, folder: Union[str, Path, None] = None):
        fd, self.path = tempfile.mkstemp(prefix=".dvt-rows-", suffix=".jsonl", dir=folder)
        self._f = os.fdopen(fd, "w", encoding="utf-8")
        self._n = 0
        self._readers: set = set()  # open readers, closed with the spool (Windows deletes no file held open)

    def append(self, row: dict) -> None:
        """One row, on disk before this returns (a full disk fails here, at this row: the rows before it are whole)."""
        line = json.dumps(row, allow_nan=False) + "\n"  # strict JSON: NaN is no answer
        self._f.write(line)
        self._f.flush()
        self._n += 1

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[dict]:
        f = open(self.path, encoding="utf-8")  # a reader of its own: appending may go on after
        self._readers.add(f)
        try:
            for _, line in zip(range(self._n), f):  # a row written but not counted (cut short) is not read
                yield json.loads(line)
        finally:
            f.close()
            self._readers.discard(f)

    def close(self) -> None:
        for f in [self._f, *self._readers]:  # a reader left suspended (an error while writing the result) too
            try:
                f.close()
            except OSError:  # the write that failed (a full disk) fails again at close: nothing more to keep
                pass
        self._readers.clear()
        try:
            os.unlink(self.path)
        except OSError:  # gone already, or held by another program (Windows): left, a hidden temporary file
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


def budget_verdict(r: dict, ms: Optional[Sequence[Optional[float]]] = None) -> Optional[tuple[float, bool]]:
    """In budget mode: predict's own time per image (stages and its own work, as the budget was priced) in the budget's
    statistic (the mean or any percentile), and whether it met the budget (NaN: not); None in other modes. ``ms``: each
    image's ``predict_ms`` (default: read from ``r["images"]``)."""
    metric = r.get("budget_metric")
    ms = [x.get("predict_ms") for x in r["images"]] if ms is None else [None if v != v else v for v in ms]  # NaN: none
    if r.get("budget_ms") is None or not isinstance(metric, str) or not ms or None in ms:
        return None
    q = check_metric(metric)  # None: the mean
    v = float(np.mean(ms)) if q is None else percentile(ms, q)  # q: an exact fraction
    return v, bool(v <= r["budget_ms"])


def _against_budget(r: dict) -> str:
    """The budget's verdict (:func:`budget_verdict`) in words, beside the budget."""
    if (got := budget_verdict(r)) is None:
        return ""
    return f"; predict {r['budget_metric']} {got[0]:.3f} ms a call, {'within' if got[1] else 'OVER'} the {r['budget_ms']:g} ms budget"


def format_result(r: dict) -> str:
    """One line per image, then the exits' counts and latency percentiles (names with control characters escaped)."""
    return "\n".join(result_lines(r))


def _names(r: dict) -> tuple[str, int, int]:
    """The images' common folder ('' where they have none: files on different drives) and the widths of the name and
    class columns, in two passes over the answers (a spool of a million is read, not held)."""
    root: Optional[str] = None
    cw = 5
    for x in r["images"]:
        d = os.path.dirname(os.path.abspath(x["file"]))
        try:
            root = d if root is None else os.path.commonpath([root, d]) if root else root
        except ValueError:  # files on different drives (Windows): names alone
            root = ""
        cw = max(cw, len(shown(x["class_name"])))  # class names whole (ImageNet's run to 30 and more)
    root = root or ""
    width = max(4, max((len(_name(x["file"], root)) for x in r["images"]), default=4))
    return root, min(60, width), min(40, cw)


def _name(file: str, root: str) -> str:
    """A file as the table shows it: under the images' common folder (names alone repeat across class folders:
    train/cat/IMG_0000.jpg, train/dog/...), or its name where there is none."""
    return shown(os.path.relpath(os.path.abspath(file), root) if root else Path(file).name)


def result_lines(r: dict) -> Iterator[str]:
    """:func:`format_result`'s lines, one at a time."""
    root, width, cw = _names(r)
    yield f"{'file':<{width}}  {'class':<{cw}} {'conf':>6}  exit  {'ms':>7}"
    for x in r["images"]:
        name = _name(x["file"], root)
        name = name if len(name) <= width else "..." + name[-(width - 3):]  # the file's own name kept
        yield (f"{name:<{width}}  {shown(x['class_name'])[:cw]:<{cw}} {x['confidence']:>6.3f}  {x['exit']:>4}  "
               f"{x['total_ms']:>7.3f}" + ("  (deadline: later exit skipped)" if x["deadline_skipped"] else "")
               + (f"  (a small image, upscaled {x['upscaled']:g}x)" if x.get("upscaled") else "")
               + ("  (a uniform image: nothing in it to classify)" if x.get("uniform") else ""))
    yield from (f"unreadable: {shown(u['error'])}" for u in r["unreadable"])
    yield from (f"failed: {shown(u['file'])}: {shown(u['error'])}" for u in r.get("failed", []))
    n = r["n_images"]
    failed = f", {len(r['failed'])} failed" if r.get("failed") else ""
    if n:
        c, pre = r["latency_ms"]["cascade"], r["latency_ms"]["preprocess"]
        shares = " / ".join(f"{k}" for k in r["exit_counts"])
        yield (f"{n} images ({len(r['unreadable'])} unreadable{failed}): exits 1-{len(r['exit_counts'])} answered {shares}; cascade ms "
               f"mean {c['mean']:.3f}, p50 {c['p50']:.3f}, p90 {c['p90']:.3f}; preprocessing p50 {pre['p50']:.3f} ms; "
               f"thresholds: {r['thresholds_from']}"
               + (f"; {r['deadline_missed']} of {n} over the {r['deadline_ms']:g} ms deadline" if r.get("deadline_missed") is not None else "")
               + _against_budget(r))
    else:
        yield f"no image could be answered ({len(r['unreadable'])} unreadable{failed})"
    if "accuracy" in r:  # --labels
        yield from accuracy_lines(r["accuracy"])
