"""Tables of measured costs, and the look-up that scales them to a job and says how.

A cost table is a JSON file ``{"format": "coalora-costs/1", "rows": [...]}`` (plus optional
``about`` and ``machine``); each row is one measurement of one (shape, method, dtype), with
its provenance (``device``, ``date``, ``commit``, ``command``) and the settings it ran
under (``block_parameters``, ``batch_size``, ``max_length``, ``configs_per_step``). Its
measured quantities may each be null (not measured there):

- ``step_seconds``: seconds per optimizer step;
- ``eval_seconds_per_config``: seconds to evaluate one configuration, on ``eval_examples``
  examples (or windows/documents);
- ``peak_memory_gib``: the peak memory of the measured run.

``benchmarks/paper_shapes.py --json`` (and ``benchmarks/gpu_check.sh``) write such a file;
``measured/`` holds the repository's (the default of ``coalora price``).

A job is priced from the closest row with the quantity: the same shape before another, the
same dtype before another, the same kind of model (classification / causal LM), a GPU and the
nearest size before the rest. Steps come from the method's own rows, else from QLoRA's
(``PROXY``: a LoRA step under one configuration); evaluations and peak memory from any
method's run. What differs from the job is scaled linearly, and the basis says so: block
parameters (``x4.94 params``), tokens per step (batch x length: ``x8 tokens``) and LoRA
passes per step (K for a method that trains several configurations per step, 1 otherwise:
``x2 passes``); a dtype is never converted, the basis names the one measured (``fp32 for
bf16``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from ..io import read_json
from .shapes import PAPER_SHAPES, block_parameters

FORMAT = "coalora-costs/1"
MEASURED = Path(__file__).resolve().parent / "measured"
DEFAULT_COSTS = MEASURED / "h200-2026-11-28.json"
QUANTITIES = ("step_seconds", "eval_seconds_per_config", "peak_memory_gib")
# Methods measured for themselves; any other is priced as this method's step.
PROXY = "qlora"
# Methods that train several configurations per step (K LoRA passes): their `serves` trait.
K_PASSES = ("any", "shared")


@dataclasses.dataclass(frozen=True)
class CostRow:
    shape: str
    method: str
    dtype: str
    device: str
    date: str
    commit: str
    command: str
    block_parameters: int
    batch_size: int
    max_length: int
    configs_per_step: int
    step_seconds: float | None = None
    eval_seconds_per_config: float | None = None
    eval_examples: int | None = None
    peak_memory_gib: float | None = None
    note: str = ""

    @property
    def tokens(self) -> int:
        return self.batch_size * self.max_length

    def source(self) -> str:
        return f"{self.device}, {self.date}, commit {self.commit}, `{self.command}`"


def load_costs(path: str | Path) -> list[CostRow]:
    """The rows of a cost table; a malformed table fails with one line naming the culprit."""
    data = read_json(path, "cost table")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a cost table (its `format` must be {FORMAT!r})")
    unknown = set(data) - {"format", "about", "machine", "rows"}
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    fields = {f.name: f for f in dataclasses.fields(CostRow)}
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING]
    rows = []
    for k, row in enumerate(data.get("rows") or []):
        where = f"{path}: row {k + 1}"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: not an object")
        if set(row) - set(fields):
            raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(set(row) - set(fields)))}")
        missing = [n for n in required if row.get(n) is None]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}")
        if row["shape"] not in PAPER_SHAPES:
            raise ValueError(f"{where}: unknown shape {row['shape']!r}; known: {', '.join(PAPER_SHAPES)}")  # fmt: skip
        for name in ("block_parameters", "batch_size", "max_length", "configs_per_step", *QUANTITIES):  # fmt: skip
            value = row.get(name)
            if value is not None and (not isinstance(value, (int, float)) or value <= 0):
                raise ValueError(f"{where}: {name} must be a positive number, got {value!r}")
        rows.append(CostRow(**row))
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


@dataclasses.dataclass(frozen=True)
class Priced:
    value: float
    row: CostRow  # the measurement it comes from
    scalings: tuple[str, ...] = ()  # what was scaled or substituted, in short

    def basis(self, ref: str) -> str:
        return " ".join([ref, *self.scalings])


def passes(serves: str, configs_per_step: int) -> int:
    """LoRA forward/backward passes per optimizer step of a method serving ``serves``."""
    return configs_per_step if serves in K_PASSES else 1


def look_up(
    rows: list[CostRow],
    quantity: str,
    *,
    shape: str,
    method: str,
    dtype: str,
    traits: dict,
    batch_size: int = 0,
    max_length: int = 0,
    configs_per_step: int = 1,
) -> Priced:
    """``quantity`` for one job of ``method`` on ``shape`` in ``dtype``, from the closest row
    (module docstring), scaled to the job. Raises ValueError when no row has it."""
    having = [r for r in rows if getattr(r, quantity) is not None]
    if quantity == "step_seconds":  # the method's own steps, else QLoRA's LoRA step
        having = [r for r in having if r.method == method] or [
            r for r in having if r.method == PROXY
        ]
    if not having:
        raise ValueError(f"no cost row has {quantity} for method {method!r} (nor {PROXY!r})")
    kind = PAPER_SHAPES[shape]["kind"]
    size = block_parameters(shape)

    def distance(row: CostRow):
        return (
            row.shape != shape,
            row.dtype != dtype,
            PAPER_SHAPES[row.shape]["kind"] != kind,
            "cpu" in row.device.lower(),
            abs(math.log(size / row.block_parameters)),
            row.method != method,
        )

    row = min(having, key=distance)
    value = getattr(row, quantity)
    scalings = []
    if quantity == "step_seconds" and row.method != method:
        scalings.append(f"as {row.method}")
    if row.block_parameters != size:
        value *= size / row.block_parameters
        scalings.append(f"x{size / row.block_parameters:.3g} params")
    if quantity == "step_seconds":
        if batch_size * max_length != row.tokens:
            value *= batch_size * max_length / row.tokens
            scalings.append(f"x{batch_size * max_length / row.tokens:.3g} tokens")
        wanted = passes(traits[method]["serves"], configs_per_step)
        measured = passes(traits[row.method]["serves"], row.configs_per_step)
        if wanted != measured:
            value *= wanted / measured
            scalings.append(f"x{wanted / measured:.3g} passes")
    if row.dtype != dtype:
        scalings.append(f"{row.dtype} for {dtype}")
    return Priced(value, row, tuple(scalings))
