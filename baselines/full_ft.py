"""Full fine-tuning: the full-precision reference. Every weight trains (embeddings, norms and
heads included), nothing is quantized and there is no LoRA.

Configurations play no part: the method trains with one full-precision pass per step (not K
identical ones), and the model for any configuration is the full-precision model. Its fixed
configuration set is empty (``fixed_configs``); configurations given to it anyway are recorded
with the checkpoint and otherwise ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from coalora.export import write_adapter_manifest
from coalora.io import atomic_dir
from coalora.methods import Method, Serves
from coalora.quant import ModelQConfig
from coalora.quant.targets import QuantTarget


class FullFineTuning(Method):
    name = "full-ft"
    serves = Serves.FULL_PRECISION

    @classmethod
    def fixed_configs(cls, targets: list[QuantTarget]) -> list[ModelQConfig]:
        """No configuration: full precision."""
        return []

    def setup(self) -> dict:
        if self.qbase.current is not None:
            self.qbase.restore()  # start from the full-precision weights
        for p in self.model.parameters():
            p.requires_grad_(True)
        return {}

    def configs_for_step(self, rng: np.random.Generator, k: int) -> list[None]:
        return [None]  # one full-precision pass per step, whatever K is

    def activate(self, mqc: ModelQConfig | None) -> None:
        # Full precision under every configuration. Never qbase.restore() here: it would
        # overwrite the trained weights with the pretrained ones.
        if mqc is not None:
            mqc.check_targets(self.targets)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        # named_parameters() lists a tied weight once (safetensors refuses shared tensors).
        return {n: p.detach().cpu().clone() for n, p in self.model.named_parameters()}

    @torch.no_grad()
    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unexpected:
            raise ValueError(
                f"full-ft checkpoint does not fit the model: missing {missing[:2]}, unexpected {unexpected[:2]}"
            )
        for name, p in params.items():
            if tuple(state[name].shape) != tuple(p.shape):
                raise ValueError(
                    f"full-ft checkpoint key {name!r} has shape {tuple(state[name].shape)}, "
                    f"the model expects {tuple(p.shape)}"
                )
            p.copy_(state[name].to(device=p.device, dtype=p.dtype))

    def export(self, mqc: ModelQConfig | None, out_dir: str | Path, base_model: str) -> Path:
        """Not an adapter: the whole fine-tuned model and tokenizer (``save_pretrained``)."""
        self.prepare_eval(mqc)
        with atomic_dir(out_dir) as tmp:
            self.model.save_pretrained(str(tmp))
            self.loaded.tokenizer.save_pretrained(str(tmp))
            write_adapter_manifest(tmp, self.name, self.model, base_model)
        return Path(out_dir)

    @classmethod
    def load_exported(cls, model: torch.nn.Module, adapter_dir: Path) -> torch.nn.Module:
        """The saved model itself (``model`` only tells its class: causal LM or classifier)."""
        return type(model).from_pretrained(str(adapter_dir))
