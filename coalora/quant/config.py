"""The per-matrix quantization configuration and its option space (docs/method.md section 2).

A matrix's configuration is the 5-tuple ``(b, b0, d1, B0, B1)``:

* ``b``  NormalFloat (or integer) bits of the weights,
* ``b0`` bits of the first-level absmax scales (unsigned integers),
* ``d1`` dtype of the second-level scales,
* ``B0`` first-level block size (weights per scale),
* ``B1`` second-level block size (first-level scales per second-level scale).

Every field has a small list of choices, so the space is a product of 4*4*3*3*3 = 432
options. The search encodes a configuration as the index of each field's choice, so the
order of ``FIELD_CHOICES`` is part of the on-disk format: do not reorder it.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

FIELD_CHOICES: dict[str, tuple] = {
    "b": (2, 3, 4, 8),
    "b0": (2, 3, 4, 8),
    "d1": ("bf16", "fp16", "fp32"),
    "B0": (16, 32, 64),
    "B1": (16, 64, 256),
}
FIELDS: tuple[str, ...] = tuple(FIELD_CHOICES)
DTYPE_BITS = {"bf16": 16, "fp16": 16, "fp32": 32}


@dataclass(frozen=True, order=True)
class QuantConfig:
    """One matrix's quantization configuration; validated on construction."""

    b: int
    b0: int
    d1: str
    B0: int
    B1: int

    def __post_init__(self):
        for field in FIELDS:
            value = getattr(self, field)
            allowed = FIELD_CHOICES[field]
            # bool is an int subclass; True must not pass as 1.
            if isinstance(value, bool) or value not in allowed:
                raise ValueError(
                    f"QuantConfig field {field!r} has value {value!r}; allowed values: "
                    f"{', '.join(map(str, allowed))}"
                )

    @property
    def bits(self) -> float:
        """Bits per parameter: weights + first-level scales + second-level scales."""
        return self.b + self.b0 / self.B0 + DTYPE_BITS[self.d1] / (self.B0 * self.B1)

    @property
    def field_indices(self) -> tuple[int, ...]:
        """Index of each field's value among its choices (the search's encoding)."""
        return tuple(FIELD_CHOICES[f].index(getattr(self, f)) for f in FIELDS)

    @property
    def index(self) -> int:
        """Position of this configuration in ``ALL_OPTIONS`` (0..431)."""
        return _OPTION_INDEX[self]

    @classmethod
    def from_field_indices(cls, indices) -> QuantConfig:
        indices = [int(i) for i in indices]
        if len(indices) != len(FIELDS):
            raise ValueError(f"expected {len(FIELDS)} field indices, got {len(indices)}")
        values = {}
        for field, i in zip(FIELDS, indices, strict=True):
            choices = FIELD_CHOICES[field]
            if not 0 <= i < len(choices):
                raise ValueError(f"field {field!r} index {i} out of range 0..{len(choices) - 1}")
            values[field] = choices[i]
        return cls(**values)

    @classmethod
    def from_index(cls, index: int) -> QuantConfig:
        if not 0 <= int(index) < len(ALL_OPTIONS):
            raise ValueError(f"option index {index} out of range 0..{len(ALL_OPTIONS) - 1}")
        return ALL_OPTIONS[int(index)]

    @classmethod
    def from_dict(cls, data: dict) -> QuantConfig:
        if not isinstance(data, dict):
            raise ValueError(f"a quantization configuration must be a mapping, got {data!r}")
        missing = [f for f in FIELDS if f not in data]
        extra = [k for k in data if k not in FIELD_CHOICES]
        if missing or extra:
            raise ValueError(
                f"quantization configuration {data!r}: missing fields {missing}, unknown fields "
                f"{extra}; expected exactly {list(FIELDS)}"
            )
        return cls(**{f: data[f] for f in FIELDS})

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"NF{self.b}/s{self.b0}/{self.d1}/B0={self.B0}/B1={self.B1}"


ALL_OPTIONS: tuple[QuantConfig, ...] = tuple(
    QuantConfig(*values) for values in itertools.product(*FIELD_CHOICES.values())
)
_OPTION_INDEX = {qc: i for i, qc in enumerate(ALL_OPTIONS)}
MIN_BITS = min(qc.bits for qc in ALL_OPTIONS)
MAX_BITS = max(qc.bits for qc in ALL_OPTIONS)
