"""A model-level quantization configuration: one ``QuantConfig`` per quantizable matrix.

On disk (JSON)::

    {"avg_bits": 3.02, "budget": 3.0, "quantizer": "nf", "model": "smollm2-135m",
     "name": "ilp-3.00", "modules": {"model.layers.0.self_attn.q_proj": {"b": 3, ...}, ...}}

``avg_bits`` is the parameter-weighted mean of the matrices' bits (quantized matrices only).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..io import read_json, sha256_json, write_json
from .codebooks import QUANTIZERS
from .config import FIELD_CHOICES, FIELDS, QuantConfig
from .targets import QuantTarget


def average_bits(qconfigs: list[QuantConfig], numels: list[int]) -> float:
    total = sum(numels)
    return sum(n * qc.bits for n, qc in zip(numels, qconfigs, strict=True)) / total


@dataclass
class ModelQConfig:
    """Per-matrix configurations of a model, keyed by module name (in target order)."""

    modules: dict[str, QuantConfig]
    avg_bits: float
    quantizer: str = "nf"
    budget: float | None = None
    model: str | None = None
    name: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.quantizer not in QUANTIZERS:
            raise ValueError(
                f"unknown quantizer {self.quantizer!r}; allowed values: {', '.join(QUANTIZERS)}"
            )

    # --- construction -------------------------------------------------------------------
    @classmethod
    def from_list(cls, targets: list[QuantTarget], qconfigs: list[QuantConfig], **kw):
        if len(targets) != len(qconfigs):
            raise ValueError(f"{len(qconfigs)} configurations for {len(targets)} matrices")
        return cls(
            modules={t.name: qc for t, qc in zip(targets, qconfigs, strict=True)},
            avg_bits=average_bits(qconfigs, [t.numel for t in targets]),
            **kw,
        )

    @classmethod
    def uniform(cls, targets: list[QuantTarget], qc: QuantConfig, **kw):
        return cls.from_list(targets, [qc] * len(targets), **kw)

    @classmethod
    def decode(cls, vector, targets: list[QuantTarget], **kw):
        """Inverse of ``encode``: a length-5N vector of field indices -> configuration."""
        vector = np.asarray(vector).astype(int).reshape(len(targets), len(FIELDS))
        return cls.from_list(targets, [QuantConfig.from_field_indices(v) for v in vector], **kw)

    # --- views --------------------------------------------------------------------------
    def encode(self, targets: list[QuantTarget]) -> np.ndarray:
        """Field-index vector of length 5N in target order (the search's encoding)."""
        self.check_targets(targets)
        return np.array(
            [i for t in targets for i in self.modules[t.name].field_indices], dtype=np.int64
        )

    def option_indices(self, targets: list[QuantTarget]) -> list[int]:
        self.check_targets(targets)
        return [self.modules[t.name].index for t in targets]

    def key(self) -> tuple:
        """Hashable identity (duplicate detection): quantizer + every module's option."""
        return (self.quantizer, tuple((n, qc.index) for n, qc in self.modules.items()))

    def identity(self) -> str:
        """sha256 of the quantizer and every module's configuration: what a record's
        ``hashes.qconfig`` and the training log's drawn configurations are (names, budgets
        and other labels do not count)."""
        modules = {name: qc.to_dict() for name, qc in self.modules.items()}
        return sha256_json({"quantizer": self.quantizer, "modules": modules})

    def check_targets(self, targets: list[QuantTarget], source: str = "configuration") -> None:
        """Raise a one-line ``ValueError`` unless the module names equal the model's."""
        expected = [t.name for t in targets]
        missing = [n for n in expected if n not in self.modules]
        unknown = [n for n in self.modules if n not in set(expected)]
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} module(s) of the model, e.g. {missing[0]!r}")
            if unknown:
                parts.append(f"{len(unknown)} module(s) not in the model, e.g. {unknown[0]!r}")
            raise ValueError(f"{source} does not fit the model: {'; '.join(parts)}")

    # --- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        data = {
            "avg_bits": self.avg_bits,
            "budget": self.budget,
            "quantizer": self.quantizer,
            "model": self.model,
            "name": self.name,
            "modules": {n: qc.to_dict() for n, qc in self.modules.items()},
        }
        data.update(self.extra)
        return data

    @classmethod
    def from_dict(
        cls, data: dict, targets: list[QuantTarget] | None = None, source="configuration"
    ):
        if not isinstance(data, dict) or "modules" not in data or "avg_bits" not in data:
            raise ValueError(f"{source}: expected a JSON object with keys 'avg_bits' and 'modules'")
        if not isinstance(data["modules"], dict) or not data["modules"]:
            raise ValueError(f"{source}: 'modules' must be a non-empty mapping of module -> fields")
        modules = {}
        for name, fields in data["modules"].items():
            try:
                modules[name] = QuantConfig.from_dict(fields)
            except ValueError as err:
                raise ValueError(f"{source}: module {name!r}: {err}") from None
        known = {"avg_bits", "budget", "quantizer", "model", "name", "modules"}
        extra = {k: v for k, v in data.items() if k not in known}
        mqc = cls(
            modules=modules,
            avg_bits=float(data["avg_bits"]),
            quantizer=data.get("quantizer", "nf"),
            budget=data.get("budget"),
            model=data.get("model"),
            name=data.get("name"),
            extra=extra,
        )
        if targets is not None:
            mqc.check_targets(targets, source)
            # Re-derive avg_bits from the model: a hand-edited file must not lie about it.
            mqc.modules = {t.name: mqc.modules[t.name] for t in targets}
            actual = average_bits(list(mqc.modules.values()), [t.numel for t in targets])
            if abs(actual - mqc.avg_bits) > 1e-6:
                raise ValueError(
                    f"{source}: avg_bits {mqc.avg_bits} disagrees with its modules ({actual:.6f})"
                )
        return mqc

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike, targets: list[QuantTarget] | None = None):
        return cls.from_dict(read_json(path, "configuration file"), targets, source=str(path))


def config_identity(mqc: ModelQConfig | None) -> str:
    """A configuration's identity (``ModelQConfig.identity``); None, the full-precision model,
    has one too."""
    if mqc is None:
        return sha256_json({"quantizer": "none", "modules": {}})
    return mqc.identity()


def field_cardinalities(n_targets: int) -> np.ndarray:
    """Number of choices of each coordinate of the length-5N encoding."""
    per = [len(FIELD_CHOICES[f]) for f in FIELDS]
    return np.array(per * n_targets, dtype=np.int64)
