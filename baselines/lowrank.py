"""Low-rank + quantized initialisation shared by LQ-LoRA and LoftQ.

Both methods write a weight matrix as ``W ~ Q + L1 @ L2`` with ``Q`` quantized and ``L1 L2``
of rank r, by alternating a rank-r SVD and quantization, and start LoRA from the low-rank
part: ``B = L1`` and ``A = L2 / scaling``, so that the adapted weight ``Q + scaling * B A``
equals ``Q + L1 L2`` at step 0. They differ in the order of the alternation (see
``lq_decompose`` and ``loftq_decompose``).

In both, ``Q`` is the quantization of ``W - S`` for a low-rank ``S = S1 @ S2`` (LQ-LoRA:
``S = L1 L2``; LoftQ: the low-rank part of the previous iteration, zero after one
iteration). The base weight of the adapted model under a configuration ``c`` is therefore
``deq(quant_c(W - S))``: exactly ``Q`` for the training configuration, and a well-defined
base for any other configuration. ``ResidualBase`` applies it, and the checkpoint stores
``S1, S2`` beside the LoRA factors, so a reloaded run rebuilds its base exactly without
repeating the decomposition.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from coalora.budgets import task_fisher
from coalora.export import QCONFIG_FILE, export_peft_adapter, load_peft_adapter
from coalora.io import atomic_dir
from coalora.lora import load_lora_state_dict, lora_state_dict
from coalora.methods import Method, Serves
from coalora.quant import (
    ModelQConfig,
    QuantConfig,
    QuantizedBase,
    quantizable_targets,
    quantize_dequantize,
)
from coalora.quant.lowrank import svd_factors

from .common import with_provenance

Quantizer = Callable[[torch.Tensor], torch.Tensor]  # W -> deq(quant(W))
# (W, option, quantizer name) -> deq(quant(W)): how a configuration quantizes one matrix.
ConfigQuantizer = Callable[[torch.Tensor, QuantConfig, str], torch.Tensor]

# Where the low-rank source S of the base lives in an exported adapter directory.
BASE_RESIDUAL_FILE = "base_residual.safetensors"
BASE_RESIDUAL_KEY = "base_residual"
# Suffixes of the stored S factors in a checkpoint's tensors.
_S1, _S2 = ".base_lowrank.S1", ".base_lowrank.S2"

if TYPE_CHECKING:
    from peft import PeftModel


@dataclass
class LowRankSplit:
    """``W ~ deq(quant(W - S1 S2)) + L1 L2`` for one matrix (``S1 = None``: S = 0)."""

    l1: torch.Tensor  # [out, r], LoRA B at init
    l2: torch.Tensor  # [r, in], LoRA A * scaling at init
    s1: torch.Tensor | None
    s2: torch.Tensor | None
    # ||W - Q - L1 L2||_F (Fisher-weighted if given) after each iteration run, and the
    # index of the iteration whose split this is (LQ-LoRA stops at the first rise).
    errors: list[float]
    kept: int


# --- rank-r factorisations -----------------------------------------------------------------


def fisher_row_col_weights(fisher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LQ-LoRA's rank-one approximation of a Fisher matrix: row and column weights
    ``sqrt(mean_j F_ij)`` and ``sqrt(mean_i F_ij)`` ("two-sided", reduce before sqrt).

    Weights are clamped to 1e-6 of their largest value, so rows or columns with zero Fisher
    (never reached by the calibration data) stay finite when the factors are divided back.
    """
    rows = fisher.mean(dim=1, keepdim=True).sqrt()
    cols = fisher.mean(dim=0, keepdim=True).sqrt()
    if rows.max() <= 0 or cols.max() <= 0:
        return torch.ones_like(rows), torch.ones_like(cols)
    return rows.clamp_min(rows.max() * 1e-6), cols.clamp_min(cols.max() * 1e-6)


def weighted_svd_factors(
    a: torch.Tensor,
    fisher: torch.Tensor | None,
    rank: int,
    randomized: bool,
    oversampling: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-r factors minimising ``||D_r (A - L1 L2) D_c||_F`` for the row/column weights of
    ``fisher`` (exact for a rank-one Fisher; LQ-LoRA's approximation otherwise)."""
    if fisher is None:
        return svd_factors(a, rank, randomized, oversampling, seed)
    rows, cols = fisher_row_col_weights(fisher)
    l1, l2 = svd_factors(rows * a * cols, rank, randomized, oversampling, seed)
    return l1 / rows, l2 / cols


def _error(residual: torch.Tensor, fisher: torch.Tensor | None) -> float:
    if fisher is not None:
        residual = fisher.sqrt() * residual
    return float(torch.linalg.norm(residual))


# --- the two alternations --------------------------------------------------------------------


@torch.no_grad()
def lq_decompose(
    weight: torch.Tensor,
    quantize: Quantizer,
    rank: int,
    iters: int,
    fisher: torch.Tensor | None = None,
    randomized: bool = True,
    oversampling: int = 10,
    seed: int = 0,
) -> LowRankSplit:
    """LQ-LoRA (Guo et al. 2024, ``lowrank_quantized_sparse_decomposition``): starting from
    ``Q = 0``, repeat ``L1 L2 = SVD_r(W - Q)``; ``Q = quant(W - L1 L2)`` up to ``iters`` times,
    stopping as soon as the error ``||W - Q - L1 L2||`` rises. [decision] The best iterate is
    kept (the official code returns the worse last one, with a TODO saying so).

    With ``fisher`` the SVD is LQ-LoRA's row/column-weighted one and the error is
    ``||sqrt(F) * (W - Q - L1 L2)||``; the quantizer itself is never weighted.
    """
    if iters < 1:
        raise ValueError(f"LQ-LoRA needs at least one iteration, got {iters}")
    w = weight.to(torch.float32)
    q = torch.zeros_like(w)
    errors: list[float] = []
    for it in range(iters):
        l1, l2 = weighted_svd_factors(w - q, fisher, rank, randomized, oversampling, seed + it)
        q = quantize(w - l1 @ l2)
        errors.append(_error(w - q - l1 @ l2, fisher))
        if it > 0 and errors[-1] > errors[-2]:
            break
        kept, kept_it = (l1, l2), it
    return LowRankSplit(l1=kept[0], l2=kept[1], s1=kept[0], s2=kept[1], errors=errors, kept=kept_it)


@torch.no_grad()
def loftq_decompose(
    weight: torch.Tensor, quantize: Quantizer, rank: int, iters: int
) -> LowRankSplit:
    """LoftQ, step for step as peft's ``loftq_init``: ``Q = quant(W)``; ``L = SVD_r(W - Q)``
    (full SVD); then ``iters - 1`` more rounds of ``Q = quant(W - L)``, ``L = SVD_r(W - Q)``.
    The last step is an SVD, so ``Q`` comes from the previous round's ``L`` (kept as S)."""
    if iters < 1:
        raise ValueError(f"LoftQ needs at least one iteration, got {iters}")
    w = weight.to(torch.float32)
    source: tuple[torch.Tensor, torch.Tensor] | None = None
    errors = []
    for it in range(iters):
        q = quantize(w if source is None else w - source[0] @ source[1])
        l1, l2 = svd_factors(w - q, rank, randomized=False)
        errors.append(_error(w - q - l1 @ l2, None))
        if it + 1 < iters:
            source = (l1, l2)
    s1, s2 = source if source is not None else (None, None)
    return LowRankSplit(l1=l1, l2=l2, s1=s1, s2=s2, errors=errors, kept=len(errors) - 1)


# --- the base weights of a configuration -------------------------------------------------------


class ResidualBase:
    """Sets each targeted linear to ``deq(quant_c(W - S))`` for a configuration ``c``, through
    ``qbase.set_weights`` (the one writer of base weights).

    ``originals`` are the full-precision weights (``qbase.base_weights``, shared, not
    copied); ``sources`` the low-rank S per matrix (missing or None: S = 0); ``quantize`` the
    quantizer (default: coalora's, under each matrix's option). The dequantized
    weights of the last configuration are kept, so training under one configuration quantizes
    once and only copies afterwards.
    """

    def __init__(self, qbase: QuantizedBase, quantize: ConfigQuantizer = quantize_dequantize):
        self.qbase = qbase
        self.originals = qbase.base_weights
        self.quantize = quantize
        self.sources: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {}
        self._cached_key = None
        self._cached: dict[str, torch.Tensor] = {}

    def set_sources(self, sources: dict[str, tuple[torch.Tensor, torch.Tensor] | None]) -> None:
        self.sources = dict(sources)
        self._cached_key, self._cached = None, {}

    def residual(self, name: str) -> torch.Tensor:
        source = self.sources.get(name)
        w = self.originals[name].to(torch.float32)  # quantized from fp32, however it is held
        return w if source is None else w - source[0] @ source[1]

    @torch.no_grad()
    def apply(self, mqc: ModelQConfig) -> None:
        if mqc.key() != self._cached_key:
            # Held as the model holds its weights (the compute dtype).
            self._cached = {
                name: self.quantize(self.residual(name), mqc.modules[name], mqc.quantizer).to(
                    linear.weight.dtype
                )
                for name, linear in self.qbase.linears.items()
            }
            self._cached_key = mqc.key()
        self.qbase.set_weights(
            self._cached, f"{mqc.name or 'configuration'} on a low-rank residual"
        )


# --- the method ----------------------------------------------------------------------------------


class LowRankInitMethod(Method):
    """Per-configuration LoRA initialised from a low-rank + quantized decomposition.

    Subclasses set ``options_cls`` and implement ``decompose``. The decomposition runs once,
    in ``initialise()``: the engine reaches it through ``parameters()`` before its timer
    starts, so its seconds are recorded apart (``init_seconds`` in the configuration's
    provenance). Loading a checkpoint (``load_trainable_state``) restores the stored S and
    LoRA factors instead of decomposing again.
    """

    serves = Serves.TRAINED_CONFIGURATION

    def setup(self) -> dict:
        self.residual_base = ResidualBase(self.qbase, self.quantize)
        self.initialised = False
        self.init_splits: dict[str, tuple[list[float], int]] = {}  # errors, kept iteration
        self.init_seconds = 0.0
        return super().setup()

    def decompose(
        self, index: int, name: str, weight: torch.Tensor, quantize: Quantizer, fisher
    ) -> LowRankSplit:
        """The split of target ``index`` (``name``) with the configuration's ``quantize``."""
        raise NotImplementedError

    def quantize(self, weight: torch.Tensor, qc: QuantConfig, quantizer: str) -> torch.Tensor:
        """How the base is quantized under an option (coalora's quantizer unless overridden)."""
        return quantize_dequantize(weight, qc, quantizer)

    def fisher_task(self) -> str | None:
        return None

    def provenance(self) -> dict:
        return {"method": self.name, "options": dataclasses.asdict(self.options)}

    def initialise(self) -> None:
        """Decompose every targeted matrix under the training configuration; set the LoRA
        factors and the base. Runs once."""
        if self.initialised:
            return
        started = time.perf_counter()
        [mqc] = self.train_configs
        r = self.settings.r
        too_small = [t for t in self.targets if r > min(t.shape)]
        if too_small:
            t = too_small[0]
            raise ValueError(
                f"method {self.name!r}: LoRA rank r={r} exceeds the smaller side of {t.name} "
                f"{t.shape}; the low-rank part cannot have rank r"
            )
        # The Fisher needs gradients: computed before the no-grad decomposition.
        fisher = self._fisher(self.fisher_task()) if self.fisher_task() else {}
        scaling = self.settings.alpha / self.settings.r
        sources = {}
        with torch.no_grad():
            for index, t in enumerate(self.targets):
                qc = mqc.modules[t.name]
                split = self.decompose(
                    index,
                    t.name,
                    self.qbase.base_weights[t.name],
                    lambda x, qc=qc: self.quantize(x, qc, mqc.quantizer),
                    fisher.get(t.name),
                )
                wrapper = self.wrappers[t.name]
                wrapper.lora_B.copy_(split.l1)
                wrapper.lora_A.copy_(split.l2 / scaling)
                sources[t.name] = None if split.s1 is None else (split.s1, split.s2)
                self.init_splits[t.name] = (split.errors, split.kept)
        self.residual_base.set_sources(sources)
        self.init_seconds = time.perf_counter() - started
        self.initialised = True
        self.train_configs = [with_provenance(mqc, self._provenance_record())]

    def _provenance_record(self) -> dict:
        runs = [len(errors) for errors, _ in self.init_splits.values()]
        first = [errors[0] for errors, _ in self.init_splits.values()]
        kept = [errors[k] for errors, k in self.init_splits.values()]
        return {
            **self.provenance(),
            "init_seconds": round(self.init_seconds, 3),
            "base_rule": "deq(quant_c(W - S1 @ S2)); S stored in the checkpoint",
            "iterations_run": {"min": min(runs), "max": max(runs), "mean": sum(runs) / len(runs)},
            # Model-level Frobenius norms of W - Q - L1 L2 (all targeted matrices together).
            "error_first_iteration": math.sqrt(math.fsum(e * e for e in first)),
            "error_kept": math.sqrt(math.fsum(e * e for e in kept)),
        }

    def _fisher(self, task_name: str) -> dict[str, torch.Tensor]:
        """Diagonal Fisher of the full-precision model (``coalora.budgets.task_fisher``, the
        recipe of the Fisher-weighted cost tables)."""
        self.qbase.restore()  # LoRA B is still 0: the model is the full-precision base
        # The targets are wrapped by now; their nn.Linear is the wrapper's ``base_layer``.
        wrapped = [dataclasses.replace(t, name=f"{t.name}.base_layer") for t in self.targets]
        device = next(self.model.parameters()).device
        fisher = task_fisher(
            self.model, self.loaded.tokenizer, wrapped, task_name, self.settings.seed
        )
        return {
            t.name: fisher[w.name].to(device) for t, w in zip(self.targets, wrapped, strict=True)
        }

    # --- engine hooks -----------------------------------------------------------------------
    def parameters(self) -> list[torch.nn.Parameter]:
        self.initialise()
        return super().parameters()

    def activate(self, mqc: ModelQConfig) -> None:
        self.initialise()
        mqc.check_targets(self.targets)
        self.residual_base.apply(mqc)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        self.initialise()
        state = lora_state_dict(self.model)
        for name, source in self.residual_base.sources.items():
            if source is not None:
                state[name + _S1] = source[0].detach().cpu().clone()
                state[name + _S2] = source[1].detach().cpu().clone()
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        lora = {k: v for k, v in state.items() if not k.endswith((_S1, _S2))}
        load_lora_state_dict(self.model, lora)
        sources = {}
        for t in self.targets:
            s1, s2 = state.get(t.name + _S1), state.get(t.name + _S2)
            if (s1 is None) != (s2 is None):
                raise ValueError(f"checkpoint has only one of the two base factors of {t.name!r}")
            device = self.qbase.base_weights[t.name].device
            sources[t.name] = None if s1 is None else (s1.to(device), s2.to(device))
        self.residual_base.set_sources(sources)
        self.initialised = True

    def export(self, mqc: ModelQConfig, out_dir: str | Path, base_model: str) -> Path:
        """A standard peft adapter plus ``base_residual.safetensors`` (S1, S2 per module).

        ``qconfig.json`` names the residual file under ``base_residual``: the adapter belongs on
        ``deq(quant_c(W - S1 S2))``, not on ``deq(quant_c(W))``; ``load_residual_adapter``
        builds that base. Without any S (LoftQ with one iteration) it is a plain export.
        """
        self.initialise()
        self.prepare_eval(mqc)
        sources = {n: s for n, s in self.residual_base.sources.items() if s is not None}
        if not sources:
            return super().export(mqc, out_dir, base_model)
        tagged = dataclasses.replace(
            mqc, extra={**mqc.extra, BASE_RESIDUAL_KEY: BASE_RESIDUAL_FILE}
        )
        tensors = {}
        for name, (s1, s2) in sources.items():
            tensors[f"{name}.S1"] = s1.detach().cpu().contiguous()
            tensors[f"{name}.S2"] = s2.detach().cpu().contiguous()
        with atomic_dir(out_dir) as tmp:
            # export_peft_adapter replaces ``tmp`` atomically with the adapter; the residual is
            # added beside it before ``out_dir`` appears.
            task_type = "SEQ_CLS" if self.loaded.kind == "classification" else "CAUSAL_LM"
            export_peft_adapter(
                self.model,
                self.wrappers,
                None,
                tagged,
                self.targets,
                tmp,
                base_model,
                task_type,
                method=self.name,
            )
            save_file(
                tensors,
                str(tmp / BASE_RESIDUAL_FILE),
                metadata={"rule": "base = deq(quant(W - S1 @ S2))"},
            )
        return Path(out_dir)

    @classmethod
    def load_exported(cls, model: nn.Module, adapter_dir: Path):
        return load_residual_adapter(model, adapter_dir)


@torch.no_grad()
def load_residual_adapter(
    model: nn.Module, adapter_dir: str | Path, is_trainable: bool = False
) -> PeftModel:
    """Load an adapter exported by LQ-LoRA / LoftQ onto ``model`` (full precision, modified in
    place): each targeted weight becomes ``deq(quant_c(W - S1 S2))``, then peft loads the adapter.
    An export without S (LoftQ with one iteration) is a plain adapter.
    """
    adapter_dir = Path(adapter_dir)
    mqc = ModelQConfig.load(adapter_dir / QCONFIG_FILE, quantizable_targets(model))
    if BASE_RESIDUAL_KEY not in mqc.extra:
        return load_peft_adapter(model, adapter_dir, is_trainable=is_trainable)
    residual_file = adapter_dir / mqc.extra[BASE_RESIDUAL_KEY]
    if not residual_file.is_file():
        raise FileNotFoundError(
            f"adapter {adapter_dir} has no base residual file {residual_file.name}"
        )
    factors = load_file(residual_file)
    residual_base = ResidualBase(QuantizedBase(model, cache_bytes=0))
    residual_base.set_sources(
        {
            name: (factors[f"{name}.S1"], factors[f"{name}.S2"])
            for name in mqc.modules
            if f"{name}.S1" in factors
        }
    )
    residual_base.apply(mqc)
    from peft import PeftModel  # lazy: peft costs ~6 s to import (coalora/export.py)

    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=is_trainable)
