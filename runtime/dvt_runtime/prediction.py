"""What the cascade answers for one image (:class:`Prediction`), and the softmax it decides on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Prediction", "softmax"]


@dataclass(eq=False)
class Prediction:
    """One image's answer: ``label`` (class index), ``class_name``, ``confidence`` (the answering exit's max softmax), ``exit``
    (0-based: 0 is exit 1; ``to_dict()`` and every file number exits from 1), ``probs``, and the time it took."""

    label: int
    class_name: str
    confidence: float
    exit: int  # 0-based index of the exit that answered
    probs: np.ndarray  # (classes,) softmax of that exit
    total_ms: float  # wall time of every stage call this sample was part of (in a batch: the whole call)
    stage_ms: list[float] = field(default_factory=list)  # per stage actually run
    deadline_skipped: bool = False  # a later stage was skipped to meet the deadline
    stage_ms_per_image: list[float] = field(default_factory=list)  # each stage call's time / images in it

    def __eq__(self, other: object) -> bool:
        """Every field equal, ``probs`` element by element (the dataclass default raised on the array). Timings are
        fields, so two calls on one image are rarely equal: to compare answers, compare ``label`` and ``exit``."""
        if not isinstance(other, Prediction):
            return NotImplemented
        mine, theirs = vars(self), vars(other)
        return all(np.array_equal(v, theirs[k]) if k == "probs" else v == theirs[k] for k, v in mine.items())

    __hash__ = None  # mutable, compared by value

    def __repr__(self) -> str:  # a notebook shows this for every image: the answer, not the softmax array
        return (f"Prediction(label={self.label}, class_name={self.class_name!r}, confidence={self.confidence:.4f}, exit={self.exit}, "
                f"total_ms={self.total_ms:.3f})")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the exit numbered from 1, as in every file this project writes; ``probs`` left out."""
        return {"label": self.label, "class_name": self.class_name, "confidence": self.confidence, "exit": self.exit + 1,
                "total_ms": self.total_ms, "stage_ms": self.stage_ms, "stage_ms_per_image": self.stage_ms_per_image,
                "deadline_skipped": self.deadline_skipped}


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)
