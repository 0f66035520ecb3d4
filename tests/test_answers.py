"""predict's answers in flat memory: the spool, the tally and the streamed JSON (dvt_runtime.answers)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from dvt_runtime.answers import AnswerTally, RowSpool, result_json


def _rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"file": f"/d/{'cät' if i % 3 else 'dog'}/\x1bimg \"{i}\".jpg", "label": int(rng.integers(10)), "class_name": "cat",
             "confidence": float(rng.random()), "exit": int(rng.integers(1, 4)), "total_ms": float(rng.random()),
             "stage_ms": [float(v) for v in rng.random(3)], "deadline_skipped": False, "preprocess_ms": 0.1, "predict_ms": 0.2,
             **({"uniform": True} if i % 5 == 0 else {}), "budget_thresholds": [0.5, None, None]} for i in range(n)]


@pytest.mark.parametrize("n", [0, 1, 7])
def test_the_streamed_json_is_byte_for_byte_the_json_of_the_rows_in_memory(tmp_path, n):
    """The file a spooled run writes is the one the rows held in memory wrote (same keys, order, indentation, escapes)."""
    rows = _rows(n)
    result = {"schema": "dvt-predictions", "n_images": n, "nested": {"a": [1, 2]}, "images": rows, "unreadable": [{"file": "x"}],
              "empty": [], "notes": ["ü \x00"]}
    want = json.dumps(result, indent=2, allow_nan=False) + "\n"
    with RowSpool(tmp_path) as spool:
        for r in rows:
            spool.append(r)
        got = "".join(result_json({**result, "images": spool}))
        assert len(spool) == n and list(spool) == rows and list(spool) == rows  # read back whole, as often as asked
    assert got == want
    assert json.loads(got)["images"] == rows
    assert "".join(result_json(result)) == want  # rows in a list stream the same


def test_the_spool_refuses_nan_and_is_removed_however_it_ends(tmp_path):
    spool = RowSpool(tmp_path)
    assert os.path.dirname(spool.path) == str(tmp_path) and os.path.basename(spool.path).startswith(".dvt-rows-")
    with pytest.raises(ValueError):
        spool.append({"confidence": float("nan")})  # strict JSON: a NaN is no answer
    spool.append({"a": 1})
    with open(spool.path, "a", encoding="utf-8") as f:  # a row written, its count not yet taken (an interrupt in between)
        f.write('{"a": 2}\n')
    assert list(spool) == [{"a": 1}]
    spool.close()
    spool.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError), RowSpool(tmp_path):
        raise RuntimeError("a run that failed")
    assert list(tmp_path.iterdir()) == []


def _score_of_rows(rows: list[dict], classes: list[str], num_exits: int) -> dict:
    """The score as the rows held in memory computed it (session 65's scoring.score), for comparison."""
    per_exit = []
    for e in range(1, num_exits + 1):
        at = [r["correct"] for r in rows if r["exit"] == e]
        per_exit.append({"answered": len(at), "correct": sum(at), "top1": 100.0 * sum(at) / len(at) if at else None})
    per_class = []
    for c in sorted({r["true_label"] for r in rows}):
        got = [r["correct"] for r in rows if r["true_label"] == c]
        per_class.append({"class": classes[c], "label": c, "n": len(got), "correct": sum(got), "top1": 100.0 * sum(got) / len(got)})
    k = sum(r["correct"] for r in rows)
    return {"n": len(rows), "correct": k, "top1": 100.0 * k / len(rows), "per_exit": per_exit, "per_class": per_class,
            "classes_absent": [c for i, c in enumerate(classes) if i not in {p["label"] for p in per_class}]}


def test_the_tallys_score_is_the_rows_score_in_one_pass():
    classes = [f"c{i}" for i in range(12)]
    rows = _rows(500, seed=3)
    rng = np.random.default_rng(4)
    t = AnswerTally(3)
    for r in rows:
        r["true_label"] = int(rng.integers(0, 9))  # classes 9-11 absent
        r["correct"] = bool(rng.random() < 0.7) if r["exit"] != 2 else False  # exit 2 never right
        t.add(r, [0.2, 0.3, 0.5])
    got = t.score(classes, not_scored=4)
    want = _score_of_rows(rows, classes, 3)
    assert {k: got[k] for k in want} == want and got["not_scored"] == 4 and got["per_exit"][1]["top1"] == 0.0
    assert json.dumps(got)  # plain numbers, no numpy scalars
    assert AnswerTally(3).score(classes, 0) is None
    assert t.exit_counts() == np.bincount([r["exit"] - 1 for r in rows], minlength=3).tolist()
    assert t.expected_shares() == pytest.approx([0.2, 0.3, 0.5])


def test_a_tally_cut_short_agrees_with_the_rows_kept():
    """An interrupt between the tally's add and the row's own append (or inside the add) leaves one image too many in
    some of the tally's arrays: truncate makes every array, the expected shares too, hold the rows kept."""
    rows = _rows(5)
    t = AnswerTally(3)
    for i, r in enumerate(rows):
        t.add(r, None if i == 4 else [0.1 * i, 0.2, 0.7 - 0.1 * i])
    t.total_ms.append(9.0)  # an add cut short after its first append
    t.truncate(3)
    assert len(t) == 3 and len(t.total_ms) == len(t.confidence) == 3 and len(t.shares) == 9
    assert t.expected_shares() == pytest.approx([0.1, 0.2, 0.6]) and t.exit_counts() == np.bincount(
        [r["exit"] - 1 for r in rows[:3]], minlength=3).tolist()
    t2 = AnswerTally(3)
    for i, r in enumerate(rows):
        t2.add(r, None if i == 4 else [1.0, 0.0, 0.0])
    assert t2.expected_shares() is None  # one image's shares unknown: no comparison


def test_a_spool_closes_the_readers_it_opened(tmp_path):
    """A result write that failed midway left a reader of the spool suspended (in the error's traceback): on Windows the
    spool could not be deleted and the error became a traceback. close() closes its readers, and an unlink it cannot
    do is left, not raised."""
    spool = RowSpool(tmp_path)
    spool.append({"a": 1})
    spool.append({"a": 2})
    it = iter(spool)
    assert next(it) == {"a": 1}
    (reader,) = spool._readers
    spool.close()
    assert reader.closed and not spool._readers and list(tmp_path.iterdir()) == []
