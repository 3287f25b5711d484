"""Split policy: every split is fixed, the same on every run and machine.

Each random choice draws from its own seeded stream (``_rng``). Bible classification tasks are
split 80/10/10 stratified by label. When a source has no labelled test split its validation
split becomes ``test`` and ``validation`` is a seeded slice held out of ``train`` (at most
``HOLDOUT_MAX`` records, ``HOLDOUT_FRACTION`` of train). ``max_train``/``max_eval`` limits take a
seeded stratified sample (classification) or a prefix of documents (lm).
"""

from __future__ import annotations

import math
import random

from .task import SPLITS, TaskData, TaskSpec

# Size of the validation slice held out of train when a source has no labelled test split.
HOLDOUT_MAX = 1000
HOLDOUT_FRACTION = 0.1


def _rng(*key) -> random.Random:
    """An independent, fixed random stream per purpose (str seeds hash with sha512)."""
    return random.Random(":".join(str(k) for k in key))


def _stratified_three_way(name: str, records: list[dict]) -> tuple[list, list, list]:
    """80/10/10 split, stratified by label, each split shuffled."""
    splits: tuple[list, list, list] = ([], [], [])
    for label in sorted({r["label"] for r in records}):
        group = [r for r in records if r["label"] == label]
        _rng(name, "split", label).shuffle(group)
        n_eval = round(len(group) * 0.1)
        splits[0].extend(group[2 * n_eval :])
        splits[1].extend(group[:n_eval])
        splits[2].extend(group[n_eval : 2 * n_eval])
    for split_name, split in zip(SPLITS, splits, strict=True):
        _rng(name, "order", split_name).shuffle(split)
    return splits


def _hold_out(name: str, train: list[dict]) -> tuple[list[dict], list[dict]]:
    """(train without the held-out slice, the slice) -- seeded, train order kept."""
    n = min(HOLDOUT_MAX, int(len(train) * HOLDOUT_FRACTION))
    if n < 1:
        raise ValueError(
            f"task {name!r}: train has {len(train)} records, too few to hold out validation"
        )
    chosen = set(_rng(name, "holdout").sample(range(len(train)), n))
    kept = [r for i, r in enumerate(train) if i not in chosen]
    held = [r for i, r in enumerate(train) if i in chosen]
    return kept, held


def _from_sources(spec: TaskSpec, splits: dict[str, list[dict]]) -> TaskData:
    if "test" in splits:
        return TaskData(spec, splits["train"], splits["validation"], splits["test"])
    train, validation = _hold_out(spec.name, splits["train"])
    return TaskData(spec, train, validation, splits["validation"])


def _limit(records: list[dict], n: int | None, spec: TaskSpec, split: str) -> list[dict]:
    """At most ``n`` records: a prefix for lm (documents stay contiguous), otherwise a seeded
    sample stratified by label (class balance is kept), in the original order."""
    if n is None or n >= len(records):
        return list(records)
    if spec.kind == "lm":
        return records[:n]
    by_label: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        by_label.setdefault(r["label"], []).append(i)
    labels = sorted(by_label)
    exact = {lab: n * len(by_label[lab]) / len(records) for lab in labels}
    quota = {lab: math.floor(exact[lab]) for lab in labels}
    # Largest remainders get the records left over after flooring.
    for lab in sorted(labels, key=lambda lab: (quota[lab] - exact[lab], lab))[
        : n - sum(quota.values())
    ]:
        quota[lab] += 1
    rng = _rng(spec.name, "limit", split)
    chosen = sorted(i for lab in labels for i in rng.sample(by_label[lab], quota[lab]))
    return [records[i] for i in chosen]
