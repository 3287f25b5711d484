"""Methods: what differs between CoA-LoRA and the baselines, behind one small interface.

A method is prepared for a base model (held once in a ``QuantizedBase``) and a training set
of configurations. The engine (``coalora.train``) then asks it, each step, for the
configurations to train under (``configs_for_step``) and to switch the model to each one
(``activate``). After training, ``activate`` + ``model`` give the model for any configuration
at evaluation, and ``export`` writes a standard PEFT adapter for it.

Methods register by name in ``METHODS``; baselines live in ``baselines/`` and register there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .export import export_peft_adapter
from .lora import inject_lora, load_lora_state_dict, lora_state_dict
from .mapper import CoALoRA, ConfigAwareMapper
from .quant import ModelQConfig, QuantizedBase
from .quant.allocate import budget_grid

METHODS: dict[str, type[Method]] = {}


def register_method(cls):
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    import baselines  # noqa: F401 - registers the baseline methods

    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]


class Method:
    """Base class: plain LoRA on the quantized base, trained under ``train_configs``.

    Subclasses override what differs. ``settings`` is a ``coalora.train.TrainSettings``.
    """

    name = "lora"
    # Trains one run per configuration (needs --budget / --qconfig).
    per_config = False
    # Default initial training-set budgets when the caller gives none.
    default_budgets: tuple[float, ...] = ()

    def __init__(self, loaded, qbase: QuantizedBase, settings, train_configs: list[ModelQConfig]):
        if not train_configs and self.fixed_configs(qbase.targets) != []:
            raise ValueError(f"method {self.name!r} needs at least one training configuration")
        if self.per_config and len(train_configs) != 1:
            raise ValueError(
                f"method {self.name!r} trains one configuration per run, got {len(train_configs)}"
            )
        self.loaded = loaded
        self.model = loaded.model
        self.qbase = qbase
        self.settings = settings
        self.targets = qbase.targets
        for mqc in train_configs:
            mqc.check_targets(self.targets, f"training configuration {mqc.name or ''}".strip())
        self.train_configs = list(train_configs)
        self.wrappers = self.setup()

    # --- hooks a subclass may override -------------------------------------------------
    @classmethod
    def fixed_configs(cls, targets) -> list[ModelQConfig] | None:
        """The configurations this method always trains on (e.g. QLoRA-bnb's one NF4 setting,
        full fine-tuning's none), or None when the caller chooses them."""
        return None

    @classmethod
    def allocation_lowrank_rank(cls, settings) -> int | None:
        """Rank r when the method's ILP allocates over the costs of ``W - SVD_r(W)`` (LQ-LoRA)
        rather than of ``W``; None for the plain quantization costs."""
        return None

    def setup(self) -> dict:
        """Add the trainable parts to ``self.model``; return the LoRA wrappers."""
        s = self.settings
        return inject_lora(
            self.model, self.targets, r=s.r, alpha=s.alpha, dropout=s.dropout, seed=s.seed
        )

    @property
    def mapper(self) -> ConfigAwareMapper | None:
        return None

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def configs_for_step(self, rng: np.random.Generator, k: int) -> list[ModelQConfig]:
        """K distinct configurations of the training set (all of them when it is smaller)."""
        k = min(k, len(self.train_configs))
        picks = rng.choice(len(self.train_configs), size=k, replace=False)
        return [self.train_configs[i] for i in sorted(picks)]

    def activate(self, mqc: ModelQConfig) -> None:
        self.qbase.apply(mqc)

    def end_of_epoch(self, step: int) -> dict | None:
        return None

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return lora_state_dict(self.model)

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        load_lora_state_dict(self.model, state)

    def extra_state(self) -> dict:
        return {"train_configs": [m.to_dict() for m in self.train_configs]}

    def load_extra_state(self, state: dict) -> None:
        self.train_configs = [
            ModelQConfig.from_dict(d, self.targets) for d in state["train_configs"]
        ]

    # --- shared behaviour ---------------------------------------------------------------
    @torch.no_grad()
    def prepare_eval(self, mqc: ModelQConfig) -> torch.nn.Module:
        """The model, in eval mode, adapted for ``mqc``."""
        self.model.eval()
        self.activate(mqc)
        return self.model

    @torch.no_grad()
    def export(self, mqc: ModelQConfig, out_dir: str | Path, base_model: str) -> Path:
        task_type = "SEQ_CLS" if self.loaded.kind == "classification" else "CAUSAL_LM"
        return export_peft_adapter(
            self.model,
            self.wrappers,
            self.mapper,
            mqc,
            self.targets,
            out_dir,
            base_model,
            task_type,
        )


@register_method
class CoALoRAMethod(Method):
    """CoA-LoRA: shared LoRA factors + the configuration-aware mapper (docs/method.md section 3).

    The training set starts as the ILP configurations of a budget grid and, when a search is
    attached (``attach_search``), is replaced after each epoch by the segmented Pareto set.
    """

    name = "coalora"
    # The official initial set: 2.25, 2.30, ..., 7.25, every other one kept (50 budgets).
    default_budgets = tuple(budget_grid(2.25, 7.25, 0.05, keep_every=2))

    def setup(self) -> dict:
        wrappers = super().setup()
        self._mapper = ConfigAwareMapper.for_targets(
            self.targets, self.settings.r, seed=self.settings.seed
        ).to(next(self.model.parameters()).device)
        self.coa = CoALoRA(self.model, wrappers, self._mapper, self.targets)
        self.search = None
        return wrappers

    @property
    def mapper(self) -> ConfigAwareMapper:
        return self._mapper

    def parameters(self) -> list[torch.nn.Parameter]:
        return self.coa.trainable_parameters()

    def activate(self, mqc: ModelQConfig) -> None:
        self.qbase.apply(mqc)
        self.coa.set_config(mqc)

    def attach_search(self, held_out: list[dict]) -> None:
        """Run the Pareto configuration search at the end of every epoch.

        f1 of a configuration is the current adapted model's mean loss on the fixed
        ``held_out`` batches [decision: docs/method.md section 5; the official code used an
        untrained model on one random batch].
        """
        from .search import ParetoSearch, SearchConfig

        s = self.settings

        @torch.no_grad()
        def evaluate_loss(configs: list[ModelQConfig]) -> list[float]:
            losses = []
            for mqc in configs:
                model = self.prepare_eval(mqc)
                device = next(model.parameters()).device
                losses.append(
                    float(
                        np.mean(
                            [
                                model(**{k: v.to(device) for k, v in b.items()}).loss.item()
                                for b in held_out
                            ]
                        )
                    )
                )
            return losses

        config = SearchConfig(
            mode=s.search_mode,
            n_starts=s.search_starts or None,
            max_steps=s.search_steps,
            n_segments=s.search_segments,
            seed=s.seed,
        )
        self.search = ParetoSearch(self.targets, evaluate_loss, self.train_configs, config)

    def end_of_epoch(self, step: int) -> dict | None:
        if self.search is None:
            return None
        round_log = self.search.run_round(self.settings.search_candidates)
        self.train_configs = list(self.search.training_set)
        log = round_log.to_dict()
        log["step"] = step
        return log

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return self.coa.state_dict()

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.coa.load_state_dict(state)

    def extra_state(self) -> dict:
        state = super().extra_state()
        if self.search is not None:
            state["search"] = self.search.state_dict()
        return state

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        if self.search is not None and "search" in state:
            self.search.load_state_dict(state["search"])
