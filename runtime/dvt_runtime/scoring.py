"""``predict --labels folders``: score a cascade's answers on labelled images, on the device (torch-free).

Each image's class is the name of the folder it is in (``DIR/<class>/*.jpg``, the layout the host's ``imagefolder``
data reads), matched to the bundle's class names exactly, else ignoring case and punctuation (a folder cannot be
named ``T-shirt/top``: ``t-shirt_top`` is that class). The score: top-1 accuracy with its Wilson 95% interval, per
exit (of the images each exit answered) and per class.
"""

from __future__ import annotations

import collections
import os
import re
from pathlib import Path
from typing import Optional, Sequence

from dvt_runtime.checks import class_key

__all__ = ["LABEL_SOURCES", "folder_labels", "mark", "accuracy_lines"]

LABEL_SOURCES = ("folders",)  # where --labels reads each image's class from
SYNSET = re.compile(r"n\d{8}")  # an ImageNet folder name (n01440764): its class names are the host's to map


def folder_labels(files: Sequence[Path], classes: Sequence[str]) -> dict[str, int]:
    """Each file (as ``str(file)``, the key predict's rows carry) -> the index of the class its folder names. A
    ValueError naming the folders that name no class, with the bundle's classes and the fix, before any image runs."""
    exact = {c: i for i, c in enumerate(classes)}
    loose: dict[str, list[int]] = collections.defaultdict(list)
    for i, c in enumerate(classes):
        loose[class_key(c)].append(i)
    out: dict[str, int] = {}
    unknown: collections.Counter = collections.Counter()
    for f in files:
        name = Path(os.path.abspath(f)).parent.name  # a file given bare (photo.jpg) is in the current folder
        i = exact.get(name)
        if i is None and class_key(name) and len(loose.get(class_key(name), ())) == 1:  # one class spelled that way, not two
            i = loose[class_key(name)][0]
        if i is None:
            unknown[name] += 1
        else:
            out[str(f)] = i
    if unknown:
        listed = ", ".join(f"{n!r} ({k} image{'s' * (k > 1)})" for n, k in unknown.most_common(5))
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        some = ", ".join(map(repr, list(classes)[:10])) + (f" ... ({len(classes)} in all)" if len(classes) > 10 else "")
        synsets = ("; ImageNet synset folders (n01440764) are mapped to class names on the host: score them with python -m "
                   "dvt_edge.evaluate") if any(SYNSET.fullmatch(n) for n in unknown) else ""
        raise ValueError(f"--labels folders: {sum(unknown.values())} image(s) are in folders that name none of the bundle's classes: "
                         f"{listed}{more}. Its classes: {some}. Put each image in a folder named after its class "
                         f"(DIR/<class>/*.jpg), or drop --labels{synsets}")
    return out


def mark(row: dict, labels: dict[str, int], classes: Sequence[str]) -> dict:
    """``row`` (an answer) marked ``true_label``, ``true_class`` and ``correct`` from its file's class in ``labels``
    (:func:`folder_labels`'); the score is :meth:`dvt_runtime.answers.AnswerTally.score`'s."""
    row["true_label"] = t = labels[row["file"]]
    row["true_class"] = classes[t]
    row["correct"] = bool(row["label"] == t)
    return row


def accuracy_lines(a: Optional[dict]) -> list[str]:
    """The score in words: overall with its interval, per exit, the weakest classes."""
    if a is None:
        return ["accuracy: no labelled image was answered"]
    lo, hi = a["interval95"]
    skipped = f" ({a['not_scored']} unreadable or failed, not scored)" if a["not_scored"] else ""
    exits = " / ".join(f"{x['top1']:.1f}% of {x['answered']}" if x["answered"] else "none" for x in a["per_exit"])
    lines = [f"accuracy on {a['n']} labelled images{skipped}: {a['top1']:.2f}% (95% interval {lo:.2f}-{hi:.2f}%, Wilson); "
             f"of the images each exit answered: {exits}"]
    if len(a["per_class"]) > 1:
        weak = sorted(a["per_class"], key=lambda c: (c["top1"], c["class"]))[:3]
        lines.append("weakest classes: " + ", ".join(f"{c['class']} {c['top1']:.1f}% of {c['n']}" for c in weak))
    return lines
