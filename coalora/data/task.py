"""What every task is and holds: ``TaskSpec`` (kind, text fields, labels, metric), ``TaskData``
(the ``train``/``validation``/``test`` records) and ``SPLITS``."""

from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: its kind, text fields, labels and metric."""

    name: str
    kind: str  # "classification" or "lm"
    text_fields: tuple[str, ...]  # one or two (classification), one (lm)
    metric: str  # "accuracy", "f1" (classification) or "perplexity" (lm)
    description: str
    source: str
    num_labels: int | None = None
    label_names: tuple[str, ...] | None = None
    # LM: joins consecutive documents in the token stream (GPTQ-style "\n\n".join).
    lm_separator: str = "\n\n"


@dataclass
class TaskData:
    """A task's records. Classification records hold the text fields and an int ``label``."""

    spec: TaskSpec
    train: list[dict]
    validation: list[dict]
    test: list[dict]

    def split(self, name: str) -> list[dict]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}: expected one of {', '.join(SPLITS)}")
        return getattr(self, name)

    @property
    def sizes(self) -> dict[str, int]:
        return {name: len(self.split(name)) for name in SPLITS}
