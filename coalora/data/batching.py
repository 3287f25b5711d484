"""Tokenization and deterministic batching.

Batches are dicts of tensors (``input_ids``, ``attention_mask``, ``labels``, plus
``token_type_ids`` for BERT tokenizers), right-padded with the tokenizer's real pad token.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .task import TaskData


def _tokenize_chunks(tokenizer, texts: list[str], pairs: list[str] | None, **kwargs) -> dict:
    """Tokenize in chunks (bounded memory); returns lists per key."""
    out: dict[str, list] = {}
    for start in range(0, len(texts), 1024):
        stop = start + 1024
        enc = tokenizer(
            texts[start:stop],
            pairs[start:stop] if pairs is not None else None,
            verbose=False,
            **kwargs,
        )
        for key, values in enc.items():
            out.setdefault(key, []).extend(values)
    return out


def lm_token_ids(task: TaskData, tokenizer, split: str) -> torch.Tensor:
    """One split as a single token stream: documents joined by ``spec.lm_separator``, no
    special tokens (the GPTQ perplexity protocol's ``"\\n\\n".join``)."""
    if task.spec.kind != "lm":
        raise ValueError(f"task {task.spec.name!r} is {task.spec.kind}, not lm")
    field_name = task.spec.text_fields[0]
    records = task.split(split)
    sep = task.spec.lm_separator
    texts = [r[field_name] + (sep if i < len(records) - 1 else "") for i, r in enumerate(records)]
    ids = _tokenize_chunks(tokenizer, texts, None, add_special_tokens=False)["input_ids"]
    return torch.tensor(list(itertools.chain.from_iterable(ids)), dtype=torch.long)


@dataclass
class Batches:
    """A tokenized split and a deterministic batch order.

    Iterating gives one epoch (shuffled by ``seed``, or in order when ``seed`` is None; the last
    batch may be short). ``batch(k)`` is batch ``k`` of the endless stream used by step-budget
    training: batches are always full, epochs follow each other with a fresh permutation drawn
    from ``(seed, epoch)``, so a run resumed at step k sees the same batches as one that never
    stopped. For k below ``len(self)`` (minus a short last batch) it equals the epoch's batch k.
    """

    task: TaskData
    tokenizer: object
    split: str
    batch_size: int
    max_length: int
    seed: int | None = None
    _examples: list[dict] | torch.Tensor = field(init=False, repr=False)
    _labels: list[int] | None = field(init=False, repr=False, default=None)
    _perm: tuple[int, np.ndarray] | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2, got {self.max_length!r}")
        if self.tokenizer.pad_token_id is None:
            raise ValueError(
                "tokenizer has no pad token: load it with coalora.models.load_model, which sets one"
            )
        records = self.task.split(self.split)
        if not records:
            raise ValueError(f"split {self.split!r} of task {self.task.spec.name!r} is empty")
        if self.task.spec.kind == "lm":
            self._examples = self._lm_windows()
        else:
            self._examples = self._classification_features(records)
            self._labels = [r["label"] for r in records]

    def _classification_features(self, records: list[dict]) -> list[dict]:
        fields = self.task.spec.text_fields
        first = [r[fields[0]] for r in records]
        second = [r[fields[1]] for r in records] if len(fields) == 2 else None
        if second is not None and self.tokenizer.sep_token is None:
            # No separator token (most causal-LM tokenizers): join the pair as two lines.
            first, second = [f"{a}\n{b}" for a, b in zip(first, second, strict=True)], None
        enc = _tokenize_chunks(
            self.tokenizer, first, second, truncation=True, max_length=self.max_length
        )
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        if "token_type_ids" in keys and "token_type_ids" not in self.tokenizer.model_input_names:
            keys.remove("token_type_ids")
        return [{k: enc[k][i] for k in keys} for i in range(len(records))]

    def _lm_windows(self) -> torch.Tensor:
        ids = lm_token_ids(self.task, self.tokenizer, self.split)
        n = len(ids) // self.max_length
        if n == 0:
            raise ValueError(
                f"split {self.split!r} of task {self.task.spec.name!r} has {len(ids)} tokens, "
                f"fewer than max_length {self.max_length}"
            )
        return ids[: n * self.max_length].view(n, self.max_length)

    @property
    def num_examples(self) -> int:
        return len(self._examples)

    def by_length(self) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
        """(example indices, batch) over the split with examples grouped by token length
        (stable sort), so that a batch pads to little more than its longest example: the
        evaluation order, mapped back to the split's order by the indices."""
        if isinstance(self._examples, torch.Tensor):
            lengths = [self._examples.shape[1]] * self.num_examples
        else:
            lengths = [len(features["input_ids"]) for features in self._examples]
        order = sorted(range(self.num_examples), key=lengths.__getitem__)
        for start in range(0, self.num_examples, self.batch_size):
            indices = order[start : start + self.batch_size]
            yield indices, self.collate(indices)

    def __len__(self) -> int:
        return math.ceil(self.num_examples / self.batch_size)

    def _permutation(self, epoch: int) -> np.ndarray:
        if self.seed is None:
            return np.arange(self.num_examples)
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = (epoch, rng.permutation(self.num_examples))
        return self._perm[1]

    def collate(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The batch of the given example indices, right-padded."""
        if isinstance(self._examples, torch.Tensor):
            input_ids = self._examples[list(indices)]
            return {
                "input_ids": input_ids,
                "attention_mask": torch.ones_like(input_ids),
                "labels": input_ids.clone(),
            }
        features = [self._examples[i] for i in indices]
        batch = self.tokenizer.pad(
            features, padding=True, padding_side="right", return_tensors="pt"
        )
        out = {k: v for k, v in batch.items()}
        out["labels"] = torch.tensor([self._labels[i] for i in indices], dtype=torch.long)
        return out

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = self._permutation(0)
        for start in range(0, self.num_examples, self.batch_size):
            yield self.collate(order[start : start + self.batch_size].tolist())

    def batch(self, k: int) -> dict[str, torch.Tensor]:
        """Batch ``k`` (0-based) of the endless stream."""
        if k < 0:
            raise ValueError(f"batch index must be >= 0, got {k}")
        n = self.num_examples
        positions = range(k * self.batch_size, (k + 1) * self.batch_size)
        return self.collate([int(self._permutation(p // n)[p % n]) for p in positions])

    def stream(self, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Batches ``start``, ``start + 1``, ... without end."""
        for k in itertools.count(start):
            yield self.batch(k)


def make_batches(
    task: TaskData, tokenizer, split: str, batch_size: int, max_length: int, seed: int | None = None
) -> Batches:
    """Batches for any task kind (classification: one example per row; lm: token windows)."""
    return Batches(task, tokenizer, split, batch_size, max_length, seed)


def classification_batches(
    task: TaskData, tokenizer, split: str, batch_size: int, max_length: int, seed: int | None = None
) -> Batches:
    if task.spec.kind != "classification":
        raise ValueError(f"task {task.spec.name!r} is {task.spec.kind}, not classification")
    return Batches(task, tokenizer, split, batch_size, max_length, seed)


def lm_batches(
    task: TaskData, tokenizer, split: str, batch_size: int, max_length: int, seed: int | None = None
) -> Batches:
    """Windows of ``max_length`` tokens cut from the split's token stream; labels = input_ids."""
    if task.spec.kind != "lm":
        raise ValueError(f"task {task.spec.name!r} is {task.spec.kind}, not lm")
    return Batches(task, tokenizer, split, batch_size, max_length, seed)
