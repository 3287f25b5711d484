"""LoRA wrapper: equal to peft's LoRA without mixing, exact formula with it, and injection."""

from __future__ import annotations

import copy
import math

import peft
import pytest
import torch
from torch import nn
from transformers import (
    LlamaConfig,
    LlamaForSequenceClassification,
)

from coalora.lora import (
    LoraConfig,
    LoraLinear,
    inject_lora,
    load_lora_state_dict,
    lora_state_dict,
    task_head_names,
)
from coalora.quant import ALL_OPTIONS, ModelQConfig, QuantizedBase, quantizable_targets

from tiny_models import tiny_bert, tiny_llama

LLAMA_TYPES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BERT_TYPES = [
    "query",
    "key",
    "value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
]


def randomize_lora_b(wrappers: dict[str, LoraLinear], seed: int = 1) -> None:
    """Nonzero B, so the adapter actually changes the output (B = 0 at init)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in wrappers.values():
            w.lora_B.copy_(torch.randn(w.lora_B.shape, generator=gen) * 0.1)


def copy_into_peft(peft_model, wrappers: dict[str, LoraLinear]) -> None:
    modules = dict(peft_model.base_model.model.named_modules())
    with torch.no_grad():
        for name, w in wrappers.items():
            layer = modules[name]
            layer.lora_A["default"].weight.copy_(w.lora_A)
            layer.lora_B["default"].weight.copy_(w.lora_B)


INPUT_IDS = torch.tensor([[1, 5, 9, 13, 2, 40, 33, 7], [3, 3, 60, 21, 8, 0, 11, 19]])


@pytest.mark.parametrize("model_kind", ["llama", "bert"])
def test_plain_lora_forward_equals_peft(model_kind):
    build, types, task = {
        "llama": (tiny_llama, LLAMA_TYPES, "CAUSAL_LM"),
        "bert": (tiny_bert, BERT_TYPES, "SEQ_CLS"),
    }[model_kind]
    ours = build()
    reference = copy.deepcopy(ours)
    wrappers = inject_lora(ours, r=4, alpha=8, dropout=0.0, seed=0)
    randomize_lora_b(wrappers)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=types, task_type=task)
    peft_model = peft.get_peft_model(reference, config).eval()
    peft_names = {n for n, m in peft_model.base_model.model.named_modules() if hasattr(m, "lora_A")}
    assert peft_names == set(wrappers), "peft and inject_lora adapt different modules"
    copy_into_peft(peft_model, wrappers)
    with torch.no_grad():
        expected = peft_model(input_ids=INPUT_IDS).logits
        got = ours(input_ids=INPUT_IDS).logits
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    # The check is not vacuous: the adapter moves the logits far more than the tolerance.
    with peft_model.disable_adapter(), torch.no_grad():
        plain = peft_model(input_ids=INPUT_IDS).logits
    assert (got - plain).abs().max() > 1e-3


def test_mixing_follows_the_formula():
    torch.manual_seed(0)
    base = nn.Linear(12, 10)
    layer = LoraLinear(base, r=4, alpha=8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(10, 4))
    x = torch.randn(5, 12)
    mixing = torch.randn(4, 4)
    a, b = layer.lora_A.detach(), layer.lora_B.detach()
    expected = base(x) + (8 / 4) * x @ (b @ (torch.eye(4) + mixing) @ a).T
    layer.set_mixing(mixing)
    got = layer(x)
    assert torch.allclose(got, expected, atol=1e-5)
    # delta_weight is the same update as a dense matrix.
    assert torch.allclose(base(x) + x @ layer.delta_weight().T, expected, atol=1e-5)
    # A zero mixing is plain LoRA, and so is clearing it.
    layer.set_mixing(torch.zeros(4, 4))
    zero = layer(x)
    layer.set_mixing(None)
    plain = layer(x)
    assert torch.allclose(zero, plain, atol=1e-6)
    assert torch.allclose(plain, base(x) + 2.0 * x @ (b @ a).T, atol=1e-5)
    assert (got - plain).abs().max() > 1e-2


def _unfused_forward(layer: LoraLinear, x: torch.Tensor) -> torch.Tensor:
    """The adapter's formula as separate ops: product, scaling, sum (the pre-fusion path)."""
    h = torch.nn.functional.linear(x, layer.lora_A)
    if layer.mixing is not None:
        h = h + torch.nn.functional.linear(h, layer.mixing)
    return layer.base_layer(x) + torch.nn.functional.linear(h, layer.lora_B) * layer.scaling


@pytest.mark.parametrize(
    ("r", "alpha", "fused"), [(16, 16, True), (64, 16, True), (4, 8, True), (12, 16, False)]
)
@pytest.mark.parametrize("tokens", [1, 7, 64])
def test_fused_update_gives_the_unfused_bits(r, alpha, fused, tokens):
    """One GEMM for base + scaling * B (I + M) A x: the same bits as the separate ops, in the
    output and in every gradient, with and without autograd (the speed path of training and
    evaluation must not change any number)."""
    gen = torch.Generator().manual_seed(tokens)
    base = nn.Linear(48, 96)
    layer = LoraLinear(base, r=r, alpha=alpha, generator=gen)
    assert layer._fuses_update is fused
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen))
    x0 = torch.randn(3, tokens, 48, generator=gen)
    grad_out = torch.randn(3, tokens, 96, generator=gen)
    for mixing0 in (None, torch.randn(r, r, generator=gen) * 0.3):
        runs = []
        for forward in (layer, lambda x: _unfused_forward(layer, x)):
            x = x0.clone().requires_grad_()
            mixing = None if mixing0 is None else mixing0.clone().requires_grad_()
            layer.set_mixing(mixing)
            layer.zero_grad()
            out = forward(x)
            out.backward(grad_out)
            with torch.no_grad():
                inference = forward(x0)
            grads = [x.grad, layer.lora_A.grad, layer.lora_B.grad]
            grads += [] if mixing is None else [mixing.grad]
            runs.append([out.detach(), inference, *[g.clone() for g in grads]])
        for got, expected in zip(*runs, strict=True):
            assert torch.equal(got, expected)
        # The in-place path must not touch anything but the base layer's fresh output.
        assert torch.equal(runs[0][1], runs[0][0])


def test_gradient_reaches_factors_and_mixing_not_base():
    torch.manual_seed(0)
    layer = LoraLinear(nn.Linear(6, 5), r=3, alpha=3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.lora_B.normal_()
    mixing = torch.zeros(3, 3, requires_grad=True)
    layer.set_mixing(mixing)
    layer(torch.randn(4, 6)).pow(2).sum().backward()
    assert layer.lora_A.grad is not None and layer.lora_A.grad.abs().sum() > 0
    assert layer.lora_B.grad is not None and layer.lora_B.grad.abs().sum() > 0
    assert mixing.grad is not None and mixing.grad.abs().sum() > 0
    assert layer.base_layer.weight.grad is None and not layer.base_layer.weight.requires_grad


def test_peft_style_init_is_seeded():
    def factors(seed):
        model = tiny_llama()
        wrappers = inject_lora(model, r=8, alpha=16, seed=seed)
        return {
            n: (w.lora_A.detach().clone(), w.lora_B.detach().clone()) for n, w in wrappers.items()
        }

    first, again, other = factors(7), factors(7), factors(8)
    for name, (a, b) in first.items():
        assert torch.equal(a, again[name][0])
        assert not torch.equal(a, other[name][0])
        assert torch.count_nonzero(b) == 0
        # Kaiming-uniform with a = sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        bound = 1 / math.sqrt(a.shape[1])
        assert a.abs().max() <= bound and a.abs().max() > 0.5 * bound


def test_injection_freezes_base_and_trains_head():
    model = tiny_bert()
    wrappers = inject_lora(model, r=4, alpha=8)
    assert task_head_names(model) == ["classifier"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {f"{n}.lora_{x}" for n in wrappers for x in "AB"}
    expected |= {"classifier.weight", "classifier.bias"}
    assert trainable == expected
    # LLaMA's classification head is `score`.
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, num_labels=2, pad_token_id=0,
    )  # fmt: skip
    classifier = LlamaForSequenceClassification(config)
    wrappers = inject_lora(classifier, r=4, alpha=8)
    assert task_head_names(classifier) == ["score"]
    assert {n for n, p in classifier.named_parameters() if p.requires_grad} == {
        f"{n}.lora_{x}" for n in wrappers for x in "AB"
    } | {"score.weight"}
    # A causal LM has no head to train: only the factors.
    llama = tiny_llama()
    wrappers = inject_lora(llama, r=4, alpha=8)
    assert {n for n, p in llama.named_parameters() if p.requires_grad} == {
        f"{n}.lora_{x}" for n in wrappers for x in "AB"
    }


def test_quantized_base_keeps_switching_after_injection():
    model = tiny_llama()
    quantized = QuantizedBase(model)  # before injection, on the plain nn.Linear modules
    targets = quantized.targets
    wrappers = inject_lora(model, targets, r=4, alpha=8)
    for name, wrapper in wrappers.items():
        assert wrapper.base_layer is quantized.linears[name]
        assert model.get_submodule(name) is wrapper
    mqc = ModelQConfig.uniform(targets, ALL_OPTIONS[0])  # the coarsest option: 2-bit
    with torch.no_grad():
        full = model(input_ids=INPUT_IDS).logits
        quantized.apply(mqc)
        low = model(input_ids=INPUT_IDS).logits
        quantized.restore()
        back = model(input_ids=INPUT_IDS).logits
    assert (full - low).abs().max() > 1e-3
    assert torch.equal(full, back)


def test_lora_state_dict_round_trip():
    model = tiny_bert()
    wrappers = inject_lora(model, r=4, alpha=8)
    randomize_lora_b(wrappers)
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    state = lora_state_dict(model)
    assert set(state) == {f"{n}.lora_{x}" for n in wrappers for x in "AB"} | {
        "classifier.weight",
        "classifier.bias",
    }
    other = tiny_bert()
    inject_lora(other, r=4, alpha=8, seed=5)
    load_lora_state_dict(other, state)
    with torch.no_grad():
        assert torch.equal(model(input_ids=INPUT_IDS).logits, other(input_ids=INPUT_IDS).logits)
    with pytest.raises(ValueError, match="missing key"):
        load_lora_state_dict(other, {k: v for k, v in state.items() if "classifier" not in k})
    bad = dict(state)
    key = next(iter(bad))
    bad[key] = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="has shape"):
        load_lora_state_dict(other, bad)


def test_lora_config_selects_types():
    model = tiny_llama()
    targets = quantizable_targets(model)
    wrappers = LoraConfig(r=2, alpha=4, target_types=("q_proj", "v_proj")).inject(model, targets)
    assert set(wrappers) == {t.name for t in targets if t.module_type in ("q_proj", "v_proj")}
    assert LoraConfig(r=4, alpha=16).scaling == 4.0


def test_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="rank"):
        LoraConfig(r=0)
    with pytest.raises(ValueError, match="target_types"):
        LoraConfig(target_types=("nope",))
    layer = LoraLinear(nn.Linear(4, 4), r=2, alpha=2)
    with pytest.raises(ValueError, match="shape"):
        layer.set_mixing(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="nn.Linear"):
        LoraLinear(nn.Conv1d(1, 1, 1), r=2, alpha=2)
    model = tiny_llama()
    targets = quantizable_targets(model)
    inject_lora(model, targets, r=2, alpha=2)
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        inject_lora(model, targets, r=2, alpha=2)
    with pytest.raises(ValueError, match="not in the model"):
        inject_lora(tiny_bert(), targets, r=2, alpha=2)
