"""QLoRA through bitsandbytes: the path users know.

The base model is loaded with transformers'
``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
bnb_4bit_compute_dtype=float32)`` (``BNB_SETTINGS``) and a peft LoRA is put on it with
``get_peft_model``. Only the targeted matrices are quantized (every other ``nn.Linear``,
such as ``lm_head`` or a classifier, is listed in ``llm_int8_skip_modules``).

One configuration: bitsandbytes' NF4 has blocks of 64 weights with fp32 absmax scales; its
double quantization stores the absmax as 8-bit codes (blockwise *dynamic* quantization, blocks
of 256, after subtracting their mean) with one fp32 scale per 256 absmax values. The option
of our space with the same layout is ``QuantConfig(4, 8, "fp32", 64, 256)`` (4.127 bits),
which ``BNB_NF4`` names; it differs only in how the 8-bit absmax codes are formed (ours:
linear unsigned codes of ``s - min(s)`` against the block maximum; bitsandbytes: a signed
dynamic map of ``s - mean(s)``), so the two dequantized weights are close but not equal (the
test measures it). Without double quantization bitsandbytes keeps fp32 absmax (4.5 bits),
which no option of our space expresses, so this method accepts exactly the uniform
``BNB_NF4`` configuration (``QLoRABnb.fixed_configs``).

The in-memory base model is saved to a temporary directory and reloaded through
``from_pretrained(..., quantization_config=...)``, so the 4-bit model holds exactly the
weights (and seeded task head) of the other methods' base. bitsandbytes 0.50 runs this on CPU;
its warning about the optional ``kernels`` package is harmless.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from coalora.bnb import import_bitsandbytes
from coalora.export import write_adapter_manifest
from coalora.io import atomic_dir, write_json
from coalora.lora import task_head_names
from coalora.methods import Method, Serves
from coalora.quant import ModelQConfig, QuantConfig, quantizable_targets
from coalora.quant.targets import QuantTarget

from .common import check_trained_config, uniform_option, with_provenance

# The option of our configuration space with bitsandbytes' double-quantized NF4 layout.
BNB_NF4 = QuantConfig(4, 8, "fp32", 64, 256)
BNB_CONFIG_FILE = "bnb_config.json"


@dataclass(frozen=True)
class BnbSettings:
    """What ``BitsAndBytesConfig`` gets (QLoRA's recipe). The model is loaded with fp32
    compute; ``QLoRABnb.hold_in`` sets the engine's compute dtype (``coalora.precision``)."""

    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "float32"
    quant_storage: str = "uint8"
    # bitsandbytes' 4-bit block size (fixed by the library; transformers does not expose it).
    blocksize: int = 64

    def transformers_config(self, skip_modules: list[str]):
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_use_double_quant=self.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, self.compute_dtype),
            bnb_4bit_quant_storage=getattr(torch, self.quant_storage),
            llm_int8_skip_modules=skip_modules,
        )


BNB_SETTINGS = BnbSettings()


def bnb_nf4_dequantized(weight: torch.Tensor, double_quant: bool = True) -> torch.Tensor:
    """``weight`` through bitsandbytes' NF4 (blocks of 64) and back, as a float32 tensor.

    ``double_quant=False`` is what peft's LoftQ uses (``compress_statistics=False``).
    """
    bnbf = import_bitsandbytes().functional

    w = weight.detach().to(torch.float32).contiguous()
    packed, state = bnbf.quantize_4bit(
        w, blocksize=BNB_SETTINGS.blocksize, compress_statistics=double_quant, quant_type="nf4"
    )
    return bnbf.dequantize_4bit(packed, state).to(torch.float32).reshape(weight.shape)


def _exact_name_pattern(name: str) -> str:
    # transformers matches skip entries with re.match / endswith: an escaped, anchored name
    # matches that module and nothing else.
    return re.escape(name) + "$"


def load_bnb_model(
    model: nn.Module, targets: list[QuantTarget], settings: BnbSettings = BNB_SETTINGS
):
    """``model`` reloaded with its targeted linears as bitsandbytes 4-bit layers."""
    bnb = import_bitsandbytes()

    target_names = {t.name for t in targets}
    skip = [
        _exact_name_pattern(name)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name not in target_names
    ]
    device = next(model.parameters()).device
    with tempfile.TemporaryDirectory(prefix="coalora-bnb-") as tmp:
        model.save_pretrained(tmp)
        quantized = type(model).from_pretrained(
            tmp,
            quantization_config=settings.transformers_config(skip),
            dtype=torch.float32,
            device_map={"": device},
        )
    got = {name for name, m in quantized.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    if got != target_names:
        extra, missing = sorted(got - target_names), sorted(target_names - got)
        raise ValueError(
            f"bitsandbytes quantized other modules than the targets: extra {extra[:3]}, "
            f"missing {missing[:3]}"
        )
    quantized.eval()
    return quantized


class QLoRABnb(Method):
    """bitsandbytes NF4 base + peft LoRA, for the one configuration bitsandbytes expresses."""

    name = "qlora-bnb"
    serves = Serves.FIXED_CONFIGURATION
    setup_reads_base = True  # bitsandbytes quantizes the model's weights

    @classmethod
    def fixed_configs(cls, targets: list[QuantTarget]) -> list[ModelQConfig]:
        """The only configuration this method trains: every matrix ``BNB_NF4``."""
        return [ModelQConfig.uniform(targets, BNB_NF4, name="bnb-nf4-double-quant")]

    def setup(self) -> dict:
        from peft import LoraConfig, get_peft_model

        [mqc] = self.train_configs
        option = uniform_option(mqc)
        if option != BNB_NF4 or mqc.quantizer != "nf":
            found = "mixed options" if option is None else f"{mqc.quantizer} {option}"
            raise ValueError(
                f"method 'qlora-bnb' runs bitsandbytes NF4 with double quantization, which is the "
                f"uniform configuration nf {BNB_NF4} ({BNB_NF4.to_dict()}); got {found}"
            )
        s = self.settings
        if self.qbase.current is not None:
            self.qbase.restore()  # bitsandbytes must see the full-precision weights
        quantized = load_bnb_model(self.model, self.targets)
        peft_config = LoraConfig(
            r=s.r,
            lora_alpha=s.alpha,
            lora_dropout=s.dropout,
            target_modules=[t.name for t in self.targets],
            modules_to_save=task_head_names(quantized) or None,
            task_type="SEQ_CLS" if self.loaded.kind == "classification" else "CAUSAL_LM",
            bias="none",
        )
        # peft draws A from torch's global RNG: seed it, without disturbing the caller's RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s.seed)
            self.model = get_peft_model(quantized, peft_config)
        self.train_configs = [
            with_provenance(mqc, {"method": self.name, "bitsandbytes": asdict(BNB_SETTINGS)})
        ]
        return {}  # peft's own LoRA layers, not coalora LoraLinear wrappers

    def activate(self, mqc: ModelQConfig) -> None:
        check_trained_config(self.name, self.train_configs[0], mqc)  # the base never changes

    def hold_in(self, dtype: torch.dtype) -> None:
        """As every method, and bitsandbytes' 4-bit layers dequantize into ``dtype`` (its
        ``bnb_4bit_compute_dtype``, loaded as fp32 by ``BNB_SETTINGS``)."""
        super().hold_in(dtype)
        bnb = import_bitsandbytes()
        for module in self.model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.compute_dtype = dtype

    def trainable_state(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        # No embedding layers train here; without this peft looks for the base model's
        # config in the (deleted) temporary directory the 4-bit model was loaded from.
        state = get_peft_model_state_dict(self.model, save_embedding_layers=False)
        return {k: v.detach().cpu().clone() for k, v in state.items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        expected = set(self.trainable_state())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(
                f"qlora-bnb checkpoint does not fit the model: missing {missing[:2]}, "
                f"unexpected {unexpected[:2]}"
            )
        set_peft_model_state_dict(self.model, state)

    @torch.no_grad()
    def base_state(self, mqc: ModelQConfig) -> dict[str, torch.Tensor]:
        """The full-precision model's state with each targeted matrix as bitsandbytes holds
        it, dequantized (``dequantize_4bit``: what its 4-bit layers compute with)."""
        check_trained_config(self.name, self.train_configs[0], mqc)
        bnbf = import_bitsandbytes().functional
        state = dict(self.loaded.model.state_dict())  # the full-precision model, unwrapped
        quantized = self.model.get_base_model()
        for t in self.targets:
            weight = quantized.get_submodule(t.name).get_base_layer().weight
            state[f"{t.name}.weight"] = bnbf.dequantize_4bit(weight.data, weight.quant_state)
        return state

    def export(self, mqc: ModelQConfig, out_dir: str | Path, base_model: str) -> Path:
        """peft's ``save_pretrained`` adapter plus ``bnb_config.json``: load the base with
        ``from_pretrained(base, quantization_config=BitsAndBytesConfig(**that))``."""
        check_trained_config(self.name, self.train_configs[0], mqc)
        # Name the real base model, not the temporary directory the 4-bit model was loaded from.
        self.model.peft_config["default"].base_model_name_or_path = base_model
        with atomic_dir(out_dir) as tmp:
            self.model.save_pretrained(str(tmp))
            config = self.model.base_model.model.config.quantization_config.to_dict()
            write_json(tmp / BNB_CONFIG_FILE, {**config, "base_model": base_model})
            write_adapter_manifest(tmp, self.name, self.model, base_model)
        return Path(out_dir)

    @classmethod
    def load_exported(cls, model: torch.nn.Module, adapter_dir: Path):
        """``model`` (full precision) through bitsandbytes' NF4, then peft's adapter on it."""
        from peft import PeftModel  # lazy: peft costs ~6 s to import (coalora/export.py)

        quantized = load_bnb_model(model, quantizable_targets(model))
        return PeftModel.from_pretrained(quantized, str(adapter_dir))
