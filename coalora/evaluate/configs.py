"""Configurations to evaluate from mixed items (``resolve_configs``): configurations, budgets,
qconfig files, full precision, a method's own (``TRAINED``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..budgets import DEFAULT_ALLOCATION, AllocationSpec, configs_for_budgets
from ..quant import ModelQConfig
from .records import config_label

# A configuration item: the one configuration the trained method chose for itself
# (QLoRA-bnb's NF4), known only once the checkpoint is loaded.
TRAINED = "the method's own training configuration"


def resolve_configs(
    items: Sequence, loaded, qbase, allocation: AllocationSpec = DEFAULT_ALLOCATION
) -> list[ModelQConfig | None]:
    """Configurations from mixed items: a ``ModelQConfig``; a float (a budget: the ILP
    configuration on this model); a path (a qconfig JSON, named by its file stem unless it
    has a name); ``None`` (full precision). Every configuration must fit the model."""
    budgets = [float(x) for x in items if isinstance(x, int | float) and not isinstance(x, bool)]
    by_budget = {}
    if budgets:
        allocated = configs_for_budgets(loaded, budgets, allocation, qbase=qbase)
        by_budget = dict(zip(budgets, allocated, strict=True))
    out: list[ModelQConfig | None] = []
    for item in items:
        if item is None or item is TRAINED or isinstance(item, ModelQConfig):
            mqc = item
        elif isinstance(item, int | float) and not isinstance(item, bool):
            mqc = by_budget[float(item)]
        elif isinstance(item, str | os.PathLike):
            mqc = ModelQConfig.load(item, qbase.targets)
            mqc.name = mqc.name or Path(item).stem
        else:
            raise ValueError(f"not a configuration, budget or qconfig path: {item!r}")
        if isinstance(mqc, ModelQConfig):
            mqc.check_targets(qbase.targets, f"configuration {config_label(mqc)!r}")
        out.append(mqc)
    return out
