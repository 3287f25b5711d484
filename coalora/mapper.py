"""The configuration-aware model: a matrix's quantization configuration -> its r x r mixing.

One small network, shared by every LoRA layer of the model (docs/method.md section 3)::

    e = [emb_b(b), emb_b0(b0), emb_d1(d1), emb_B0(B0), emb_B1(B1), emb_layer(l), emb_type(t)]
    U = reshape(Linear(128, r*r)(SiLU(Linear(56, 128)(LayerNorm(56)(e)))), r, r)
    M = s * U

Each embedding is 8-dim (56 in all; the order is the official code's). The last Linear
starts at weight N(0, 1e-3), bias 0, and the learnable scalar ``s`` at 1, so training
starts close to plain LoRA. **[decision]** the layer embedding has one row per layer of
*this* model (the official code hard-coded 32), and the module type is the position in
``coalora.quant.targets.MODULE_TYPES`` (attention output and FFN output are distinct).

``ConfigAwareMapper.forward`` returns ``M = s * U`` directly, the matrix that
``LoraLinear.set_mixing`` takes; ``unscaled`` gives ``U`` alone.

``CoALoRA`` ties the mapper to the model's ``LoraLinear`` wrappers: ``set_config(mqc)``
computes every matrix's mixing in one batched call and sets it on the wrappers.
Switching configuration costs one small forward pass and no training.
"""

from __future__ import annotations

import torch
from torch import nn

from .lora import LoraLinear, load_lora_state_dict, lora_state_dict, lora_wrappers
from .quant.config import FIELD_CHOICES, FIELDS
from .quant.model_config import ModelQConfig
from .quant.targets import MODULE_TYPES, QuantTarget, num_layers


class ConfigAwareMapper(nn.Module):
    """(field indices, layer index, module-type index) -> mixing matrices M = s * U."""

    def __init__(
        self,
        num_layers: int,
        r: int,
        embed_dim: int = 8,
        hidden: int = 128,
        seed: int | None = 0,
    ):
        super().__init__()
        sizes = {"num_layers": num_layers, "r": r, "embed_dim": embed_dim, "hidden": hidden}
        for what, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"ConfigAwareMapper: {what} must be a positive integer, got {value!r}"
                )
        self.num_layers = num_layers
        self.r = r
        self.embed_dim = embed_dim
        self.hidden = hidden
        # Draw the initial weights from a private seeded stream: the same seed gives the same
        # mapper, and the caller's global RNG is left untouched.
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            self.field_embeddings = nn.ModuleList(
                nn.Embedding(len(FIELD_CHOICES[f]), embed_dim) for f in FIELDS
            )
            self.layer_embedding = nn.Embedding(num_layers, embed_dim)
            self.type_embedding = nn.Embedding(len(MODULE_TYPES), embed_dim)
            in_dim = embed_dim * (len(FIELDS) + 2)
            self.net = nn.Sequential(
                nn.LayerNorm(in_dim),
                nn.Linear(in_dim, hidden),
                nn.SiLU(),
                nn.Linear(hidden, r * r),
            )
            nn.init.normal_(self.net[-1].weight, std=1e-3)
            nn.init.zeros_(self.net[-1].bias)
        self.scale = nn.Parameter(torch.tensor(1.0))

    @classmethod
    def for_targets(cls, targets: list[QuantTarget], r: int, **kw) -> ConfigAwareMapper:
        """A mapper whose layer embedding is sized from the model's targets."""
        return cls(num_layers(targets), r, **kw)

    @staticmethod
    def expected_num_parameters(num_layers: int, r: int, embed_dim: int = 8, hidden: int = 128):
        """Parameter count of the architecture above (the test checks the module against it)."""
        field_rows = sum(len(FIELD_CHOICES[f]) for f in FIELDS)
        embeddings = embed_dim * (field_rows + num_layers + len(MODULE_TYPES))
        in_dim = embed_dim * (len(FIELDS) + 2)
        layer_norm = 2 * in_dim
        mlp = (in_dim * hidden + hidden) + (hidden * r * r + r * r)
        return embeddings + layer_norm + mlp + 1  # + the scalar s

    def _check_indices(self, field_idx, layer_idx, type_idx) -> None:
        n = field_idx.shape[0] if field_idx.dim() == 2 else -1
        if field_idx.dim() != 2 or field_idx.shape[1] != len(FIELDS):
            raise ValueError(
                f"field_idx must have shape [M, {len(FIELDS)}], got {tuple(field_idx.shape)}"
            )
        if tuple(layer_idx.shape) != (n,) or tuple(type_idx.shape) != (n,):
            raise ValueError(
                f"layer_idx and type_idx must have shape [{n}], got "
                f"{tuple(layer_idx.shape)} and {tuple(type_idx.shape)}"
            )
        if n == 0:
            return
        for i, f in enumerate(FIELDS):
            col = field_idx[:, i]
            if int(col.min()) < 0 or int(col.max()) >= len(FIELD_CHOICES[f]):
                raise ValueError(
                    f"field {f!r} index out of range 0..{len(FIELD_CHOICES[f]) - 1}: "
                    f"got {int(col.min())}..{int(col.max())}"
                )
        if int(layer_idx.min()) < 0 or int(layer_idx.max()) >= self.num_layers:
            raise ValueError(
                f"layer index {int(layer_idx.max())} out of range: this mapper was built for "
                f"{self.num_layers} layers"
            )
        if int(type_idx.min()) < 0 or int(type_idx.max()) >= len(MODULE_TYPES):
            raise ValueError(
                f"module type index out of range 0..{len(MODULE_TYPES) - 1}: "
                f"got {int(type_idx.min())}..{int(type_idx.max())}"
            )

    def unscaled(self, field_idx, layer_idx, type_idx) -> torch.Tensor:
        """U, shape [M, r, r], before multiplication by the scalar s."""
        device = self.scale.device
        field_idx = torch.as_tensor(field_idx, dtype=torch.long, device=device)
        layer_idx = torch.as_tensor(layer_idx, dtype=torch.long, device=device)
        type_idx = torch.as_tensor(type_idx, dtype=torch.long, device=device)
        self._check_indices(field_idx, layer_idx, type_idx)
        parts = [emb(field_idx[:, i]) for i, emb in enumerate(self.field_embeddings)]
        parts += [self.layer_embedding(layer_idx), self.type_embedding(type_idx)]
        out = self.net(torch.cat(parts, dim=-1))
        return out.view(-1, self.r, self.r)

    def forward(self, field_idx, layer_idx, type_idx) -> torch.Tensor:
        """The mixing matrices M = s * U, shape [M, r, r] (field_idx [M, 5], others [M])."""
        return self.scale * self.unscaled(field_idx, layer_idx, type_idx)

    def mixing_for(self, mqc: ModelQConfig, targets: list[QuantTarget]) -> dict[str, torch.Tensor]:
        """Every target's M under ``mqc``, computed in one batched forward pass.

        ``targets`` may be a subset of the configuration's modules (only the layers that
        carry an adapter); each must have a configuration in ``mqc``.
        """
        if not targets:
            raise ValueError("mixing_for: no targets given")
        missing = [t.name for t in targets if t.name not in mqc.modules]
        if missing:
            raise ValueError(
                f"configuration has no entry for {len(missing)} adapted module(s), "
                f"e.g. {missing[0]!r}"
            )
        field_idx = [mqc.modules[t.name].field_indices for t in targets]
        layer_idx = [t.layer_index for t in targets]
        type_idx = [t.type_index for t in targets]
        mixings = self(field_idx, layer_idx, type_idx)
        return {t.name: m for t, m in zip(targets, mixings, strict=True)}

    def extra_repr(self) -> str:
        return f"num_layers={self.num_layers}, r={self.r}"


class CoALoRA:
    """The configuration-aware adapter: LoRA wrappers + one shared ``ConfigAwareMapper``.

    Call ``set_config(mqc)`` before every forward pass whose loss is back-propagated: the
    mixings it sets carry the autograd graph of the mapper, so training reaches the mapper
    through them (that graph is consumed by the backward pass, and the mapper's weights
    change at the optimizer step). For evaluation call it under ``torch.no_grad()``.
    The base weights are switched separately (``QuantizedBase.apply(mqc)``): quantization
    knows nothing about LoRA.
    """

    def __init__(
        self,
        model: nn.Module,
        wrappers: dict[str, LoraLinear],
        mapper: ConfigAwareMapper,
        targets: list[QuantTarget],
    ):
        by_name = {t.name: t for t in targets}
        missing = [n for n in wrappers if n not in by_name]
        if missing:
            raise ValueError(f"CoALoRA: adapted module {missing[0]!r} is not among the targets")
        if not wrappers:
            raise ValueError("CoALoRA: no LoRA wrappers given")
        in_model = lora_wrappers(model)
        foreign = [n for n, w in wrappers.items() if in_model.get(n) is not w]
        if foreign:
            raise ValueError(f"CoALoRA: wrapper {foreign[0]!r} is not a module of the model")
        ranks = {w.r for w in wrappers.values()}
        if ranks != {mapper.r}:
            raise ValueError(f"CoALoRA: mapper rank {mapper.r} != adapter rank(s) {sorted(ranks)}")
        self.model = model
        self.wrappers = wrappers
        self.mapper = mapper
        # The adapted targets, in the wrappers' order.
        self.targets = [by_name[n] for n in wrappers]
        self.current: ModelQConfig | None = None

    def set_config(self, mqc: ModelQConfig) -> dict[str, torch.Tensor]:
        """Compute every adapted matrix's M under ``mqc`` and set it; returns the mixings."""
        mixings = self.mapper.mixing_for(mqc, self.targets)
        for name, wrapper in self.wrappers.items():
            wrapper.set_mixing(mixings[name])
        self.current = mqc
        return mixings

    def set_plain(self) -> None:
        """Clear the mixings: the wrappers compute plain LoRA."""
        for wrapper in self.wrappers.values():
            wrapper.set_mixing(None)
        self.current = None

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer updates: LoRA factors, the task head (if any) and the mapper."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        return params + list(self.mapper.parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Checkpoint of the trained tensors: ``lora_state_dict(model)`` + ``mapper.*``."""
        state = lora_state_dict(self.model)
        state.update(
            {f"mapper.{k}": v.detach().cpu().clone() for k, v in self.mapper.state_dict().items()}
        )
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of ``state_dict``; one-line ``ValueError`` when it does not fit."""
        mapper_state = {k[len("mapper.") :]: v for k, v in state.items() if k.startswith("mapper.")}
        lora_state = {k: v for k, v in state.items() if not k.startswith("mapper.")}
        load_lora_state_dict(self.model, lora_state)
        try:
            self.mapper.load_state_dict(mapper_state)
        except RuntimeError as err:
            first = str(err).strip().splitlines()
            raise ValueError(
                f"CoALoRA checkpoint does not fit the mapper: {' '.join(first)}"
            ) from None
        self.set_plain()
