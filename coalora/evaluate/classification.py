"""Encoders (and any sequence classifier): accuracy and F1 on a task's test split.

F1 is the F1 of the positive class (label 1) for two labels, as GLUE reports it for QQP and
MRPC; for more labels (MNLI) it is the macro average of the per-class F1 scores, a class
that is neither present nor predicted scoring 0. MNLI's test split is validation_matched
(``coalora.data`` maps it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data import TaskData, make_batches
from ..timing import mark


def classification_metrics(
    predictions: Sequence[int], labels: Sequence[int], num_labels: int
) -> dict[str, float]:
    """``{"accuracy", "f1"}`` (binary F1 of class 1 when ``num_labels == 2``, else macro F1)."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("no examples to score")
    accuracy = sum(p == y for p, y in zip(predictions, labels, strict=True)) / len(labels)

    def f1_of(cls: int) -> float:
        tp = sum(p == cls and y == cls for p, y in zip(predictions, labels, strict=True))
        fp = sum(p == cls and y != cls for p, y in zip(predictions, labels, strict=True))
        fn = sum(p != cls and y == cls for p, y in zip(predictions, labels, strict=True))
        return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0

    if num_labels == 2:
        f1 = f1_of(1)
    else:
        f1 = sum(f1_of(c) for c in range(num_labels)) / num_labels
    return {"accuracy": float(accuracy), "f1": float(f1)}


def f1_definition(num_labels: int) -> str:
    return "binary, positive class 1" if num_labels == 2 else f"macro over {num_labels} labels"


@torch.no_grad()
def predict(model: torch.nn.Module, batches) -> tuple[list[int], list[int]]:
    """Arg-max predictions and the gold labels of every example, in the split's order.

    Examples are evaluated grouped by length (``Batches.by_length``): right padding with an
    attention mask leaves each example's logits as they are, and a batch of similar lengths
    pads far less than one in split order."""
    device = next(model.parameters()).device
    predictions, labels = [0] * batches.num_examples, [0] * batches.num_examples
    for indices, batch in batches.by_length():
        mark("first_eval_batch", once=True)  # set-up benchmark (coalora.timing)
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits
        for i, p, y in zip(
            indices, logits.argmax(dim=-1).tolist(), batch["labels"].tolist(), strict=True
        ):
            predictions[i], labels[i] = p, y
    return predictions, labels


def split_batches(task: TaskData, tokenizer, batch_size: int, max_length: int, split="test"):
    """The split tokenized once, in order (``seed=None``): a job evaluating many
    configurations reuses it for every one."""
    if task.spec.kind != "classification":
        raise ValueError(f"task {task.spec.name!r} is {task.spec.kind}, not classification")
    return make_batches(task, tokenizer, split, batch_size, max_length, seed=None)


def evaluate_classifier(
    model: torch.nn.Module,
    tokenizer,
    task: TaskData,
    batch_size: int = 32,
    max_length: int = 128,
    split: str = "test",
    batches=None,
) -> tuple[dict[str, float], dict]:
    """(metrics, protocol, per-example outcomes) of ``model`` on ``split`` of ``task``, in eval
    mode, without grad. ``batches``: the split already tokenized (``split_batches``)."""
    if batches is None:
        batches = split_batches(task, tokenizer, batch_size, max_length, split)
    model.eval()
    predictions, labels = predict(model, batches)
    num_labels = task.spec.num_labels
    protocol = {
        "split": split,
        "n_examples": len(labels),
        "batch_size": batch_size,
        "max_length": max_length,
        "f1": f1_definition(num_labels),
        "num_labels": num_labels,
    }
    metrics = classification_metrics(predictions, labels, num_labels)
    return metrics, protocol, per_example_outcomes(predictions, labels)


def per_example_outcomes(predictions: Sequence[int], labels: Sequence[int]) -> dict:
    """The record's ``per_example``: one digit per example (labels are 0-9), in order."""
    if any(not 0 <= v <= 9 for v in (*predictions, *labels)):
        raise ValueError("per-example outcomes keep one digit per label: at most 10 labels")
    return {
        "predictions": "".join(map(str, predictions)),
        "labels": "".join(map(str, labels)),
    }
