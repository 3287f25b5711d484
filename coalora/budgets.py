"""Budgets -> configurations for a model: a cached cost table, then the ILP per budget.

The cost table of a (model, quantizer, Fisher task, sampling) combination is computed once
and cached under ``$COALORA_CACHE/costs/`` keyed by a hash of the base weights, so allocating
many budgets, or rerunning, costs one table.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from . import precision
from .data import load_task, make_batches
from .io import cache_root
from .models import MODELS, load_model
from .quant import MAX_BITS, MIN_BITS, ModelQConfig, QuantizedBase
from .quant.allocate import allocate
from .quant.cost import cost_table, fisher_diagonal, hash_weights, load_cost_table, save_cost_table
from .quant.lowrank import lowrank_residuals
from .quant.targets import QuantTarget

log = logging.getLogger(__name__)

# The Fisher recipe (``task_fisher``): this many batches of 4 x 128 tokens of the task's
# training split.
FISHER_BATCHES = 8
FISHER_BATCH_SIZE = 4
FISHER_MAX_LENGTH = 128


@dataclass(frozen=True)
class AllocationSpec:
    """How budgets become configurations: the cost table's recipe (the ILP's objective) and
    where the table is read from. One object carries these from the CLI to the costs."""

    # The quantizer whose errors the table holds ("nf" or "int").
    quantizer: str = "nf"
    # Weight the errors by the diagonal empirical Fisher on this task (``task_fisher``).
    fisher_task: str | None = None
    # Estimate each matrix's costs from this many sampled weights (None: exact).
    max_elements: int | None = None
    # LQ-LoRA's costs: the quantization errors of W - SVD_r(W) instead of W.
    lowrank_rank: int | None = None
    # Seed of the Fisher batches and of the low-rank sketch.
    seed: int = 0
    # A cost-table file: read if it exists (checked against the model), else written there;
    # None: the cache under $COALORA_CACHE/costs/.
    cost_table: str | None = None

    @classmethod
    def from_cli(cls, args) -> AllocationSpec:
        """From the allocation flags of ``coalora`` (missing ones keep their defaults)."""
        values = {f.name: getattr(args, f.name, None) for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if v is not None})


# The plain NF costs, exact, from the cache (frozen: safe as a default argument).
DEFAULT_ALLOCATION = AllocationSpec()


def cost_cache_path(model_name: str, qbase: QuantizedBase, spec: AllocationSpec) -> Path:
    key = (
        f"{hash_weights(qbase.base_weights, qbase.targets)}|{spec.quantizer}|"
        f"{spec.fisher_task}|{spec.max_elements}"
    )
    if spec.lowrank_rank is not None:
        key += f"|lowrank{spec.lowrank_rank}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_name)
    return cache_root() / "costs" / f"{safe}-{spec.quantizer}-{digest}.safetensors"


def costs_for(
    loaded, qbase: QuantizedBase, spec: AllocationSpec = DEFAULT_ALLOCATION, cache: bool = True
) -> torch.Tensor:
    """The model's [N, 432] cost table, from ``spec.cost_table`` (or the cache) when present.

    ``spec.lowrank_rank`` r gives LQ-LoRA's costs: the quantization errors of
    ``W - SVD_r(W)`` (``coalora.quant.lowrank.lowrank_residuals``) instead of ``W``.
    A given table that exists is trusted only if it fits the model (checked on load)."""
    quantizer, lowrank_rank = spec.quantizer, spec.lowrank_rank
    if spec.cost_table is not None and Path(spec.cost_table).exists():
        return load_cost_table(
            spec.cost_table, qbase.targets, quantizer=quantizer, lowrank_rank=lowrank_rank
        ).costs
    path = (
        Path(spec.cost_table)
        if spec.cost_table is not None
        else cost_cache_path(loaded.name, qbase, spec)
    )
    if cache and path.exists():
        try:
            return load_cost_table(
                path, qbase.targets, quantizer=quantizer, lowrank_rank=lowrank_rank
            ).costs
        except ValueError as err:  # a stale or damaged cache entry is rebuilt, not trusted
            log.warning("rebuilding cost table: %s", err)
    fisher = None
    if spec.fisher_task is not None:
        fisher = _fisher(loaded, qbase, spec.fisher_task, spec.seed)
    weights = qbase.base_weights
    if lowrank_rank is not None:
        weights = lowrank_residuals(weights, qbase.targets, lowrank_rank, spec.seed)
    costs = cost_table(weights, qbase.targets, quantizer, fisher, spec.max_elements)
    if cache:
        save_cost_table(
            path,
            costs,
            qbase.targets,
            quantizer=quantizer,
            fisher_weighted=fisher is not None,
            max_elements=spec.max_elements,
            weights_hash=hash_weights(qbase.base_weights, qbase.targets),
            lowrank_rank=lowrank_rank,
        )
    return costs


def task_fisher(
    model: torch.nn.Module, tokenizer, targets: list[QuantTarget], task_name: str, seed: int
) -> dict[str, torch.Tensor]:
    """The one Fisher recipe (cost tables and LQ-LoRA's weighted SVD): the diagonal empirical
    Fisher of ``targets`` on ``FISHER_BATCHES`` batches of the task's training split, on the
    model's device. The caller puts the full-precision weights in first."""
    task = load_task(task_name, max_train=FISHER_BATCHES * 8)
    batches = make_batches(
        task, tokenizer, "train", FISHER_BATCH_SIZE, FISHER_MAX_LENGTH, seed=seed
    )
    device = next(model.parameters()).device
    calibration = [
        {k: v.to(device) for k, v in batches.batch(i).items()} for i in range(FISHER_BATCHES)
    ]
    return fisher_diagonal(model, calibration, targets)


def _fisher(loaded, qbase: QuantizedBase, task_name: str, seed: int) -> dict:
    # The Fisher of the full-precision model, in fp32 as the quantizer's numerics (a bf16
    # checkpoint is loaded in bf16).
    precision.hold(loaded.model, torch.float32)
    qbase.restore()
    return task_fisher(loaded.model, loaded.tokenizer, qbase.targets, task_name, seed)


def load_for_quantization(name: str, fisher_task: str | None, seed: int):
    """Load ``name`` as the kind of model its Fisher task (or its family) needs.

    Only the quantized matrices matter here, so an encoder without a task gets a throwaway
    2-label head.
    """
    if fisher_task is not None:
        spec = load_task(fisher_task, max_train=1, max_eval=1).spec
        if spec.kind == "classification":
            return load_model(name, kind="classification", num_labels=spec.num_labels, seed=seed)
        return load_model(name, kind="causal-lm", seed=seed)
    family = MODELS[name].family if name in MODELS else _family_from_config(name)
    if family == "encoder":
        return load_model(name, kind="classification", num_labels=2, seed=seed)
    return load_model(name, kind="causal-lm", seed=seed)


def _family_from_config(name: str) -> str:
    """'encoder' unless a local model directory's config names a causal-LM architecture."""
    config = Path(name).expanduser() / "config.json"
    if not config.is_file():
        return "causal-lm"  # a hub id: let load_model give its own (offline) error
    architectures = json.loads(config.read_text()).get("architectures") or []
    return "causal-lm" if any("CausalLM" in a for a in architectures) else "encoder"


def configs_for_budgets(
    model,
    budgets: list[float],
    spec: AllocationSpec = DEFAULT_ALLOCATION,
    qbase: QuantizedBase | None = None,
    names: list[str] | None = None,
) -> list[ModelQConfig]:
    """ILP configurations for ``budgets``. ``model`` is a name or a ``LoadedModel``.

    Budgets are checked before any model is loaded, so a bad budget fails at once.
    """
    for budget in budgets:
        if not MIN_BITS <= budget <= MAX_BITS:
            raise ValueError(
                f"budget {budget} bits is outside the range of the configuration space "
                f"[{MIN_BITS}, {MAX_BITS}]"
            )
    if isinstance(model, str):
        loaded = load_for_quantization(model, spec.fisher_task, spec.seed)
    else:
        loaded = model
    qbase = qbase or QuantizedBase(loaded.model)
    costs = costs_for(loaded, qbase, spec)
    names = names or [f"ilp-{budget_label(b)}" for b in budgets]
    return [
        allocate(qbase.targets, costs, b, quantizer=spec.quantizer, model=loaded.name, name=name)
        for b, name in zip(budgets, names, strict=True)
    ]


def budget_label(budget: float) -> str:
    return f"{budget:.3f}".rstrip("0").rstrip(".")
