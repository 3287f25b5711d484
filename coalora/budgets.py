"""Budgets -> configurations for a model: a cached cost table, then the ILP per budget.

The cost table of a (model, quantizer, Fisher task, sampling) combination is computed once
and cached under ``$COALORA_CACHE/costs/`` keyed by a hash of the base weights, so allocating
many budgets, or rerunning, costs one table.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from .quant import MAX_BITS, MIN_BITS, ModelQConfig, QuantizedBase
from .quant.allocate import allocate
from .quant.cost import cost_table, fisher_diagonal, hash_weights, load_cost_table, save_cost_table
from .quant.lowrank import lowrank_residuals

log = logging.getLogger(__name__)

FISHER_BATCHES = 8


def cost_cache_path(
    model_name: str,
    qbase: QuantizedBase,
    quantizer: str,
    fisher_task,
    max_elements,
    lowrank_rank: int | None = None,
):
    from .models import cache_root

    key = f"{hash_weights(qbase.base_weights, qbase.targets)}|{quantizer}|{fisher_task}|{max_elements}"
    if lowrank_rank is not None:
        key += f"|lowrank{lowrank_rank}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_name)
    return cache_root() / "costs" / f"{safe}-{quantizer}-{digest}.safetensors"


def costs_for(
    loaded,
    qbase: QuantizedBase,
    quantizer: str = "nf",
    fisher_task: str | None = None,
    max_elements: int | None = None,
    seed: int = 0,
    cache: bool = True,
    path: str | Path | None = None,
    lowrank_rank: int | None = None,
) -> torch.Tensor:
    """The model's [N, 432] cost table, from ``path`` (or the cache) when present.

    ``lowrank_rank`` r gives LQ-LoRA's costs: the quantization errors of ``W - SVD_r(W)``
    (``coalora.quant.lowrank.lowrank_residuals``) instead of ``W``.
    A given ``path`` that exists is trusted only if it fits the model (checked on load)."""
    if path is not None and Path(path).exists():
        return load_cost_table(
            path, qbase.targets, quantizer=quantizer, lowrank_rank=lowrank_rank
        ).costs
    path = (
        Path(path)
        if path is not None
        else cost_cache_path(loaded.name, qbase, quantizer, fisher_task, max_elements, lowrank_rank)
    )
    if cache and path.exists():
        try:
            return load_cost_table(
                path, qbase.targets, quantizer=quantizer, lowrank_rank=lowrank_rank
            ).costs
        except ValueError as err:  # a stale or damaged cache entry is rebuilt, not trusted
            log.warning("rebuilding cost table: %s", err)
    fisher = None
    if fisher_task is not None:
        fisher = _fisher(loaded, qbase, fisher_task, seed)
    weights = qbase.base_weights
    if lowrank_rank is not None:
        weights = lowrank_residuals(weights, qbase.targets, lowrank_rank, seed)
    costs = cost_table(weights, qbase.targets, quantizer, fisher, max_elements)
    if cache:
        save_cost_table(
            path,
            costs,
            qbase.targets,
            quantizer=quantizer,
            fisher_weighted=fisher is not None,
            max_elements=max_elements,
            weights_hash=hash_weights(qbase.base_weights, qbase.targets),
            lowrank_rank=lowrank_rank,
        )
    return costs


def _fisher(loaded, qbase: QuantizedBase, task_name: str, seed: int) -> dict:
    from .data import load_task, make_batches

    task = load_task(task_name, max_train=FISHER_BATCHES * 8)
    batches = make_batches(task, loaded.tokenizer, "train", 4, 128, seed=seed)
    qbase.restore()  # the Fisher of the full-precision model
    return fisher_diagonal(
        loaded.model, [batches.batch(k) for k in range(FISHER_BATCHES)], qbase.targets
    )


def _load_for_quantization(name: str, fisher_task: str | None, seed: int):
    """Load ``name`` as the kind of model its Fisher task (or its family) needs.

    Only the quantized matrices matter here, so an encoder without a task gets a throwaway
    2-label head.
    """
    from .models import MODELS, load_model

    if fisher_task is not None:
        from .data import load_task

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
    quantizer: str = "nf",
    fisher_task: str | None = None,
    max_elements: int | None = None,
    seed: int = 0,
    qbase: QuantizedBase | None = None,
    cost_table_path: str | Path | None = None,
    names: list[str] | None = None,
    lowrank_rank: int | None = None,
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
        loaded = _load_for_quantization(model, fisher_task, seed)
    else:
        loaded = model
    qbase = qbase or QuantizedBase(loaded.model)
    costs = costs_for(
        loaded,
        qbase,
        quantizer,
        fisher_task,
        max_elements,
        seed,
        path=cost_table_path,
        lowrank_rank=lowrank_rank,
    )
    names = names or [f"ilp-{budget_label(b)}" for b in budgets]
    return [
        allocate(qbase.targets, costs, b, quantizer=quantizer, model=loaded.name, name=name)
        for b, name in zip(budgets, names, strict=True)
    ]


def budget_label(budget: float) -> str:
    return f"{budget:.3f}".rstrip("0").rstrip(".")
