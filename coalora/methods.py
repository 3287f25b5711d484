"""Methods: what differs between CoA-LoRA and the baselines, behind one small interface.

A method is prepared for a base model (held once in a ``QuantizedBase``) and a training set
of configurations. The engine (``coalora.train``) then asks it, each step, for the
configurations to train under (``configs_for_step``) and to switch the model to each one
(``activate``). After training, ``activate`` + ``model`` give the model for any configuration
at evaluation, and ``export`` writes a standard PEFT adapter for it (``coalora export`` adds
the base it belongs on, ``base_state``, for a configuration the method serves,
``served_configuration``).

What a method IS lives on its class, once: whether it trains one run per configuration
(``per_config``), which configurations its trained model serves (``serves``), whether its ILP
allocates over its own costs (``own_allocation``), its options (``options_cls``, read from
``TrainSettings.method_options[name]``) and how its exported directory is loaded back
(``load_exported``). The workflow (``coalora methods --json`` / ``method_traits``), the
report (through the ``serves`` of each evaluation record) and the CLI ask the class.

Methods register through the entry-point group ``coalora.methods`` (``pyproject.toml``),
loaded once on first use: ``coalora`` never imports ``baselines``, and a third-party package
adds a method by declaring an entry point. Two registrations of one name are refused.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import precision
from .export import ADAPTER_MANIFEST, export_peft_adapter, load_peft_adapter
from .lora import base_state_dict, inject_lora, load_lora_state_dict, lora_state_dict
from .mapper import CoALoRA, ConfigAwareMapper
from .quant import ModelQConfig, QuantizedBase
from .quant.allocate import budget_grid

ENTRY_POINT_GROUP = "coalora.methods"


class Serves(enum.StrEnum):
    """Which configurations one trained model of a method is evaluated under."""

    ANY_CONFIGURATION = "any"  # adjusts itself to any configuration (CoA-LoRA)
    SHARED_ADAPTER = "shared"  # one unchanged adapter under any configuration (Shared-LoRA)
    TRAINED_CONFIGURATION = "trained"  # only the configuration it trained on (QLoRA, ...)
    FIXED_CONFIGURATION = "fixed"  # one configuration the method itself fixes (QLoRA-bnb)
    FULL_PRECISION = "full-precision"  # no quantization at all (full fine-tuning)


_METHODS: dict[str, type[Method]] = {}
_SOURCES: dict[str, str] = {}
_LOADED = False


def register_method(cls: type[Method], source: str | None = None) -> type[Method]:
    """Add ``cls`` under ``cls.name``; a second registration of a name is refused."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"{source or cls!r} is not a coalora.methods.Method subclass")
    source = source or f"{cls.__module__}:{cls.__qualname__}"
    if cls.name in _METHODS:
        raise ValueError(
            f"method {cls.name!r} is registered twice: by {_SOURCES[cls.name]} and by {source}"
        )
    _METHODS[cls.name] = cls
    _SOURCES[cls.name] = source
    return cls


def registered_methods() -> dict[str, type[Method]]:
    """Every method, by name, from the ``coalora.methods`` entry points (loaded once)."""
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for point in entry_points(group=ENTRY_POINT_GROUP):
            cls = point.load()
            if getattr(cls, "name", None) != point.name:
                raise ValueError(
                    f"entry point {point.name!r} = {point.value!r} names a method called "
                    f"{getattr(cls, 'name', None)!r}: the two names must agree"
                )
            register_method(cls, f"entry point {point.value!r}")
        if not _METHODS:
            raise RuntimeError(
                f"no methods are registered (entry-point group {ENTRY_POINT_GROUP!r} is empty): "
                "install the package (`make install`, or `pip install -e .`)"
            )
    return _METHODS


def get_method(name: str) -> type[Method]:
    methods = registered_methods()
    if name not in methods:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(methods))}")
    return methods[name]


def method_traits() -> dict[str, dict]:
    """Each registered method's traits as plain data (``coalora methods --json``)."""
    return {name: cls.traits() for name, cls in sorted(registered_methods().items())}


def load_adapter(adapter_dir: str | Path, model: torch.nn.Module | None = None):
    """Load any method's exported directory: its manifest names the method, whose
    ``load_exported`` rebuilds the adapted model. ``model`` is the base model to load onto
    (changed in place); by default the base named in the manifest is loaded."""
    adapter_dir = Path(adapter_dir)
    manifest_path = adapter_dir / ADAPTER_MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"not an exported coalora adapter (no {ADAPTER_MANIFEST}): {adapter_dir}"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
        method = get_method(manifest["method"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{manifest_path} is not a valid adapter manifest: {err}") from None
    if model is None:
        from .models import load_model  # lazy: the models module pulls in transformers

        kind = "classification" if manifest.get("task_type") == "SEQ_CLS" else "causal-lm"
        model = load_model(
            manifest["base_model"], kind=kind, num_labels=manifest.get("num_labels")
        ).model
    return method.load_exported(model, adapter_dir)


class Method:
    """Base class: plain LoRA on the quantized base, trained under ``train_configs``.

    Subclasses override what differs. ``settings`` is a ``coalora.train.TrainSettings``.
    """

    name = "lora"
    # Which configurations one trained model is evaluated under.
    serves: Serves = Serves.SHARED_ADAPTER
    # Trains one run per configuration (needs --budget / --qconfig, or fixes its own):
    # follows from ``serves`` (set in ``__init_subclass__``), never declared apart.
    per_config = False
    # The ILP allocates over the method's own costs (``allocation_lowrank_rank``), into its
    # own configuration files, instead of the plain quantization costs.
    own_allocation = False
    # Default initial training-set budgets when the caller gives none.
    default_budgets: tuple[float, ...] = ()
    # The method's options (a frozen dataclass whose fields all have defaults), or None.
    options_cls: type | None = None
    # Its set-up (run at construction, before the engine sets the compute dtype) computes
    # with the frozen base: forward passes or the weights as the model holds them (GPTQ,
    # bitsandbytes). The base is then held in fp32 for it, as the quantizer's numerics are,
    # whatever dtype the checkpoint was loaded in. Set-ups that only add trainable parts
    # (LoRA factors are drawn in fp32) leave it as loaded.
    setup_reads_base = False
    # ``export`` writes an adapter over a base model (``coalora export``: the base beside it);
    # False when the whole model trains (full fine-tuning): the model is the export.
    exports_adapter = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.serves = Serves(cls.serves)
        cls.per_config = cls.serves in (Serves.TRAINED_CONFIGURATION, Serves.FIXED_CONFIGURATION)

    @classmethod
    def traits(cls) -> dict:
        """What the workflow and the report need to know, as plain data."""
        return {
            "per_config": cls.per_config,
            "serves": str(cls.serves),
            "own_allocation": cls.own_allocation,
            "default_budgets": list(cls.default_budgets),
            "options": [f.name for f in dataclasses.fields(cls.options_cls)]
            if cls.options_cls
            else [],
        }

    def __init__(
        self,
        loaded,
        qbase: QuantizedBase,
        settings,
        train_configs: list[ModelQConfig],
        options: dict | None = None,
    ):
        self.options = self.build_options(settings, options)
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
        # The dtype the frozen base is held and the passes run in (``hold_in``).
        self.compute_dtype = torch.float32
        if self.setup_reads_base:
            precision.hold(self.model, torch.float32)
        self.wrappers = self.setup()

    @classmethod
    def build_options(cls, settings, given: dict | None = None) -> Any:
        """The method's options from ``given``, else ``settings.method_options[cls.name]``
        (options are keyed by method, so one method never reads another's); unknown
        methods or option names fail with a one-line error."""
        keyed = getattr(settings, "method_options", None) or {}
        if not isinstance(keyed, dict):
            raise ValueError(f"training setting 'method_options' must be a mapping, got {keyed!r}")
        unknown = sorted(set(keyed) - set(registered_methods()))
        if unknown:
            raise ValueError(
                f"training setting 'method_options' names unknown method(s) {unknown}: its "
                'keys are method names, e.g. {"lqlora": {"iters": 100}}'
            )
        data = given if given is not None else keyed.get(cls.name, {})
        if not isinstance(data, dict):
            raise ValueError(f"options of method {cls.name!r} must be a mapping, got {data!r}")
        if cls.options_cls is None:
            if data:
                raise ValueError(f"method {cls.name!r} takes no options, got {sorted(data)}")
            return None
        known = [f.name for f in dataclasses.fields(cls.options_cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for method {cls.name!r}; known: {known}")
        return cls.options_cls(**data)

    @classmethod
    def load_exported(cls, model: torch.nn.Module, adapter_dir: Path):
        """Rebuild the adapted model from a directory ``export`` wrote (see ``load_adapter``)."""
        return load_peft_adapter(model, adapter_dir)

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

    def hold_in(self, dtype: torch.dtype) -> None:
        """Make the model compute in ``dtype`` (its frozen base held in it, what trains
        kept fp32; ``coalora.precision.hold``)."""
        self.compute_dtype = dtype
        precision.hold(self.model, dtype)

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

    def served_configuration(self, asked: ModelQConfig | None) -> ModelQConfig | None:
        """The configuration an export for ``asked`` (None: none asked) is made under, or a
        one-line ``ValueError`` when the trained model does not serve it (``serves``): a
        method of one configuration exports its own, a full-precision one none."""
        if self.serves == Serves.FULL_PRECISION:
            if asked is not None:
                raise ValueError(
                    f"method {self.name!r} serves full precision only: export it without "
                    "--budget / --qconfig"
                )
            return None
        if self.serves in (Serves.TRAINED_CONFIGURATION, Serves.FIXED_CONFIGURATION):
            [own] = self.train_configs
            if asked is not None and asked.key() != own.key():
                raise ValueError(
                    f"method {self.name!r} serves only the configuration it trained on "
                    f"({own.name or 'unnamed'}, avg bits {own.avg_bits:.4f}), not "
                    f"{asked.name or 'the one asked'} (avg bits {asked.avg_bits:.4f}): "
                    "give no --budget / --qconfig to export its own"
                )
            return own
        if asked is None:
            raise ValueError(
                f"method {self.name!r} serves {self.serves} configurations: give --budget or "
                "--qconfig"
            )
        return asked

    @torch.no_grad()
    def base_state(self, mqc: ModelQConfig | None) -> dict[str, torch.Tensor]:
        """The base model ``export``'s adapter belongs on under ``mqc``, as a state dict under
        transformers' own names: each targeted matrix as the model computes with it (the
        method's own quantized base, dequantized), every other weight as the model holds it."""
        self.prepare_eval(mqc)
        return base_state_dict(self.model)

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
            method=self.name,
        )


class CoALoRAMethod(Method):
    """CoA-LoRA: shared LoRA factors + the configuration-aware mapper (docs/method.md section 3).

    The training set starts as the ILP configurations of a budget grid and, when a search is
    attached (``attach_search``), is replaced after each epoch by the segmented Pareto set.
    """

    name = "coalora"
    serves = Serves.ANY_CONFIGURATION
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
        # lazy: the search pulls in botorch and gpytorch (seconds of imports), which runs
        # without a search (search_mode frozen, epoch_steps 0) never need.
        from .search import ParetoSearch, SearchConfig

        s = self.settings

        @torch.no_grad()
        def evaluate_loss(configs: list[ModelQConfig]) -> list[float]:
            losses = []
            for mqc in configs:
                model = self.prepare_eval(mqc)
                device = next(model.parameters()).device
                batch_losses = [
                    model(**{k: v.to(device) for k, v in b.items()}).loss.item() for b in held_out
                ]
                losses.append(float(np.mean(batch_losses)))
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
