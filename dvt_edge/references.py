"""The reference checkpoints shipped with dvt-edge, and the commands that made them.

``cifar10`` (``dvt_small_cifar``, 32x32 RGB natural images) is the default of the demo, the
webcam app, ``bench`` and ``export``; ``fashion-mnist`` (``dvt_tiny_fmnist_ms``, 28x28
grayscale) is the second reference, kept for tests and comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"


PREVIOUS = "{previous}"  # in a later training step: the previous step's final checkpoint (its OUT/last.pt)


@dataclass(frozen=True)
class Reference:
    """A committed checkpoint, its model card, and the exact training commands (flags of
    ``python -m dvt_edge.train`` without ``--out``, one tuple per step) that produced it; a later
    step fine-tunes the previous one's final epoch (``--finetune {previous}``)."""

    key: str
    model: str
    checkpoint: Path
    steps: tuple[tuple[str, ...], ...]
    about: str
    eval_data: str = ""  # recorded in the published file: where it is evaluated and calibrated by default

    @property
    def card(self) -> Path:
        return card_path(self.checkpoint)

    def step_argv(self, run_dir: Path) -> list[list[str]]:
        """Each step's argument list with its ``--out`` (``RUN-stepN``, the last step ``RUN``) and
        ``{previous}`` filled in."""
        if PREVIOUS in self.steps[0]:
            raise ValueError(f"reference {self.key!r}: its first training step has no previous step to fine-tune ({PREVIOUS})")
        outs = [Path(f"{run_dir}-step{i + 1}") for i in range(len(self.steps) - 1)] + [Path(run_dir)]
        return [[str(outs[i - 1] / "last.pt") if a == PREVIOUS else a for a in step] + ["--out", str(outs[i])]
                for i, step in enumerate(self.steps)]


def card_path(checkpoint: Path) -> Path:
    """Where a published checkpoint's model card lives: ``MODEL_CARD_<stem>.md`` beside it."""
    return Path(checkpoint).parent / f"MODEL_CARD_{Path(checkpoint).stem}.md"


REFERENCES: dict[str, Reference] = {
    "cifar10": Reference(
        "cifar10", "dvt_small_cifar", ASSETS / "dvt_small_cifar.pt",
        (("--model", "dvt_small_cifar", "--data", "cifar10-jpeg", "--epochs", "42", "--seed", "0", "--lr", "0.002",
          "--warmup-epochs", "2.0", "--label-smoothing", "0.1", "--pad", "4", "--threads", "2", "--amp", "bf16"),),
        "CIFAR-10 (32x32 RGB natural images), trained on 45,000 training images, figures on the 5,000 held out",
        eval_data="cifar10-ref",
    ),
    "fashion-mnist": Reference(
        "fashion-mnist", "dvt_tiny_fmnist_ms", ASSETS / "dvt_tiny_fmnist_ms.pt",
        (("--model", "dvt_tiny_fmnist_ms", "--data", "fashion-mnist", "--epochs", "20", "--drop-path", "0.05", "--seed", "0",
          "--threads", "2"),),
        "Fashion-MNIST (28x28 grayscale clothes), figures on the official test split",
    ),
}
DEFAULT_REFERENCE = REFERENCES["cifar10"]


def default_for_model(model: "str | None") -> Reference:
    """The shipped reference to use when no checkpoint is given: the default one, or the one of ``model``;
    ValueError when no weights ship for ``model``."""
    if model is None or model == DEFAULT_REFERENCE.model:
        return DEFAULT_REFERENCE
    for ref in REFERENCES.values():
        if ref.model == model:
            return ref
    from dvt_edge.models import describe_model

    describe_model(model)  # an unknown name: ValueError listing the registered ones
    shipped = sorted(r.model for r in REFERENCES.values())
    raise ValueError(f"--model {model} without --checkpoint: dvt-edge ships weights only for {', '.join(shipped)}; pass --checkpoint "
                     f"(your run's best.pt, or a published DVT .pth.tar), or time {model}'s exits with random weights: "
                     f"python -m dvt_edge.bench --model {model} --latency-only")


def get_reference(key: str) -> Reference:
    if key not in REFERENCES:
        raise ValueError(f"unknown reference {key!r}; valid: {sorted(REFERENCES)}")
    return REFERENCES[key]
