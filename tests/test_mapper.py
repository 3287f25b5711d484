"""The configuration-aware model: size, initialisation, batching, and its glue to the LoRA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coalora.lora import inject_lora
from coalora.mapper import CoALoRA, ConfigAwareMapper
from coalora.quant import ALL_OPTIONS, MODULE_TYPES, ModelQConfig, QuantConfig, QuantizedBase

from tiny_models import tiny_llama


def random_config(targets, seed: int) -> ModelQConfig:
    rng = np.random.default_rng(seed)
    options = rng.integers(0, len(ALL_OPTIONS), size=len(targets))
    return ModelQConfig.from_list(targets, [ALL_OPTIONS[i] for i in options])


def roughen(mapper: ConfigAwareMapper, std: float = 0.05) -> None:
    """Non-trivial last layer, so U differs clearly between configurations."""
    with torch.no_grad():
        mapper.net[-1].weight.normal_(0.0, std, generator=torch.Generator().manual_seed(11))
        mapper.net[-1].bias.uniform_(-std, std, generator=torch.Generator().manual_seed(12))


INPUT_IDS = torch.tensor([[1, 5, 9, 13, 2, 40, 33, 7], [3, 3, 60, 21, 8, 0, 11, 19]])


def test_parameter_count_matches_architecture():
    # SmolLM2-135M has 30 layers; the paper quotes "about 0.54 M parameters at r = 64".
    mapper = ConfigAwareMapper(num_layers=30, r=64)
    count = sum(p.numel() for p in mapper.parameters())
    embeddings = 8 * ((4 + 4 + 3 + 3 + 3) + 30 + len(MODULE_TYPES))
    layer_norm = 2 * 56
    mlp = (56 * 128 + 128) + (128 * 64 * 64 + 64 * 64)
    assert count == embeddings + layer_norm + mlp + 1
    assert count == ConfigAwareMapper.expected_num_parameters(30, 64)
    assert 0.53e6 < count < 0.55e6


def test_initialisation_starts_near_plain_lora():
    mapper = ConfigAwareMapper(num_layers=4, r=16, seed=0)
    assert mapper.scale.item() == 1.0
    last = mapper.net[-1]
    assert torch.count_nonzero(last.bias) == 0
    assert 0.5e-3 < last.weight.std().item() < 2e-3
    out = mapper([[0, 1, 2, 0, 1], [3, 3, 0, 2, 2]], [0, 3], [0, 12])
    assert out.shape == (2, 16, 16)
    # LayerNorm + SiLU bound the hidden activations, so U starts at the 1e-3 scale.
    assert 0 < out.abs().max().item() < 0.05


def test_forward_is_scale_times_unscaled_and_seeded():
    a = ConfigAwareMapper(num_layers=3, r=4, seed=5)
    b = ConfigAwareMapper(num_layers=3, r=4, seed=5)
    c = ConfigAwareMapper(num_layers=3, r=4, seed=6)
    idx = ([[1, 0, 2, 1, 0]], [2], [4])
    assert torch.equal(a(*idx), b(*idx))
    assert not torch.equal(a(*idx), c(*idx))
    with torch.no_grad():
        a.scale.fill_(2.5)
    assert torch.allclose(a(*idx), 2.5 * a.unscaled(*idx))


def test_global_rng_is_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ConfigAwareMapper(num_layers=2, r=4, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_mixing_for_is_one_batch_equal_to_single_calls():
    model = tiny_llama()
    targets = QuantizedBase(model).targets
    mapper = ConfigAwareMapper.for_targets(targets, r=4)
    roughen(mapper)
    mqc = random_config(targets, seed=0)
    mixings = mapper.mixing_for(mqc, targets)
    assert list(mixings) == [t.name for t in targets]
    for t in targets:
        single = mapper([mqc.modules[t.name].field_indices], [t.layer_index], [t.type_index])[0]
        assert torch.allclose(mixings[t.name], single, atol=1e-6)
    # Every input matters: two matrices of the same type in different layers, or of
    # different types in the same layer, under the same option, get different mixings.
    same = ModelQConfig.uniform(targets, QuantConfig(4, 8, "fp32", 64, 256))
    uniform = mapper.mixing_for(same, targets)
    q0, q1 = "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"
    assert not torch.allclose(uniform[q0], uniform[q1])
    assert not torch.allclose(uniform[q0], uniform["model.layers.0.self_attn.k_proj"])
    assert not torch.allclose(uniform[q0], mixings[q0]) or mqc.modules[q0] == same.modules[q0]


def test_bad_indices_are_rejected():
    mapper = ConfigAwareMapper(num_layers=2, r=4)
    with pytest.raises(ValueError, match="field 'b' index out of range"):
        mapper([[4, 0, 0, 0, 0]], [0], [0])
    with pytest.raises(ValueError, match="built for 2 layers"):
        mapper([[0, 0, 0, 0, 0]], [2], [0])
    with pytest.raises(ValueError, match="module type index"):
        mapper([[0, 0, 0, 0, 0]], [0], [len(MODULE_TYPES)])
    with pytest.raises(ValueError, match=r"shape \[M, 5\]"):
        mapper([[0, 0, 0, 0]], [0], [0])
    with pytest.raises(ValueError, match="positive integer"):
        ConfigAwareMapper(num_layers=0, r=4)
    model = tiny_llama()
    targets = QuantizedBase(model).targets
    partial = ModelQConfig.from_list(targets[:3], [ALL_OPTIONS[0]] * 3)
    with pytest.raises(ValueError, match="no entry"):
        mapper.mixing_for(partial, targets)


def build_coalora(seed: int = 0):
    model = tiny_llama(seed)
    quantized = QuantizedBase(model)
    targets = quantized.targets
    wrappers = inject_lora(model, targets, r=4, alpha=8)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for w in wrappers.values():
            w.lora_B.copy_(torch.randn(w.lora_B.shape, generator=gen) * 0.1)
    mapper = ConfigAwareMapper.for_targets(targets, r=4)
    return model, quantized, targets, CoALoRA(model, wrappers, mapper, targets)


def test_set_config_trains_the_mapper_and_switches_without_training():
    model, quantized, targets, coa = build_coalora()
    roughen(coa.mapper)
    first, second = random_config(targets, 1), random_config(targets, 2)
    quantized.apply(first)
    mixings = coa.set_config(first)
    for name, wrapper in coa.wrappers.items():
        assert wrapper.mixing is mixings[name]
    loss = model(input_ids=INPUT_IDS, labels=INPUT_IDS).loss
    loss.backward()
    grads = {n: p.grad for n, p in coa.mapper.named_parameters()}
    assert grads["scale"] is not None and grads["scale"].abs() > 0
    assert grads["net.3.weight"].abs().sum() > 0
    assert all(w.lora_A.grad is not None for w in coa.wrappers.values())
    # Another configuration changes the adapted output with no optimizer step.
    with torch.no_grad():
        out_first = model(input_ids=INPUT_IDS).logits
        coa.set_config(second)
        out_second = model(input_ids=INPUT_IDS).logits
        coa.set_plain()
        out_plain = model(input_ids=INPUT_IDS).logits
    assert all(w.mixing is None for w in coa.wrappers.values())
    assert (out_first - out_second).abs().max() > 1e-4
    assert (out_second - out_plain).abs().max() > 1e-4
    # The mixing is B (I + M) A in each layer: equal to baking the dense update into W.
    with torch.no_grad():
        coa.set_config(second)
        expected = model(input_ids=INPUT_IDS).logits
        for w in coa.wrappers.values():
            w.base_layer.weight.add_(w.delta_weight())
            w.lora_B.zero_()
        assert torch.allclose(model(input_ids=INPUT_IDS).logits, expected, atol=1e-5)


def test_trainable_parameters_and_checkpoint_round_trip():
    model, _, targets, coa = build_coalora()
    roughen(coa.mapper)
    n_mapper = sum(1 for _ in coa.mapper.parameters())
    assert len(coa.trainable_parameters()) == 2 * len(coa.wrappers) + n_mapper
    mqc = random_config(targets, 3)
    with torch.no_grad():
        coa.set_config(mqc)
        expected = model(input_ids=INPUT_IDS).logits
    state = coa.state_dict()
    _, _, _, other = build_coalora(seed=0)
    other.load_state_dict(state)
    with torch.no_grad():
        other.set_config(mqc)
        assert torch.equal(other.model(input_ids=INPUT_IDS).logits, expected)
    with pytest.raises(ValueError, match="does not fit the mapper"):
        other.load_state_dict({**state, "mapper.scale": torch.ones(2)})


def test_coalora_checks_its_parts():
    model, _, targets, coa = build_coalora()
    with pytest.raises(ValueError, match="rank"):
        CoALoRA(model, coa.wrappers, ConfigAwareMapper.for_targets(targets, r=8), targets)
    with pytest.raises(ValueError, match="not among the targets"):
        CoALoRA(model, coa.wrappers, coa.mapper, targets[:2])
    with pytest.raises(ValueError, match="not a module of the model"):
        CoALoRA(tiny_llama(), coa.wrappers, coa.mapper, targets)
