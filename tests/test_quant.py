"""The paper's quantization format: option space, bit accounting, codebooks, quantizer."""

import functools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coalora.bnb import import_bitsandbytes
from coalora.quant import (
    ALL_OPTIONS,
    MAX_BITS,
    MIN_BITS,
    ModelQConfig,
    QuantConfig,
    QuantizedBase,
    apply_qconfig,
    codebook,
    dequantize,
    quantizable_targets,
    quantize,
    quantize_dequantize,
)
from coalora.quant.targets import num_layers

import tiny_models

# --- option space and bits --------------------------------------------------------------


def test_option_space_has_432_distinct_options():
    assert len(ALL_OPTIONS) == 432
    assert len(set(ALL_OPTIONS)) == 432
    assert all(QuantConfig.from_index(qc.index) == qc for qc in ALL_OPTIONS)


def test_bits_match_method():
    assert round(QuantConfig(4, 8, "fp32", 64, 256).bits, 3) == 4.127
    assert round(MIN_BITS, 3) == 2.032
    assert MAX_BITS == 8.625
    assert QuantConfig(2, 2, "bf16", 64, 256).bits == pytest.approx(2 + 2 / 64 + 16 / (64 * 256))


@pytest.mark.parametrize(
    "field,value", [("b", 5), ("b0", 1), ("d1", "fp8"), ("B0", 128), ("B1", 32)]
)
def test_unknown_value_names_field_and_choices(field, value):
    fields = dict(b=4, b0=8, d1="fp32", B0=64, B1=256)
    fields[field] = value
    with pytest.raises(ValueError, match=rf"field '{field}'.*allowed values"):
        QuantConfig(**fields)


def test_from_dict_rejects_missing_and_unknown_fields():
    with pytest.raises(ValueError, match="missing fields"):
        QuantConfig.from_dict({"b": 4, "b0": 8, "d1": "fp32", "B0": 64})
    with pytest.raises(ValueError, match="unknown fields"):
        QuantConfig.from_dict({"b": 4, "b0": 8, "d1": "fp32", "B0": 64, "B1": 256, "x": 1})


@given(st.integers(0, 431))
def test_field_index_encoding_round_trips(i):
    qc = ALL_OPTIONS[i]
    assert QuantConfig.from_field_indices(qc.field_indices) == qc


# --- codebooks --------------------------------------------------------------------------


def test_nf4_equals_bitsandbytes_table():
    bnb_functional = import_bitsandbytes().functional
    table = bnb_functional.get_4bit_type("nf4", device="cpu").sort().values
    assert torch.equal(codebook(4, "nf"), table)


def test_nf2_nf3_values_from_method():
    assert codebook(2).tolist() == pytest.approx([-1, 0, 0.3379, 1], abs=1e-4)
    assert codebook(3).tolist() == pytest.approx(
        [-1, -0.4786, -0.2171, 0, 0.1609, 0.3379, 0.5626, 1], abs=1e-4
    )


@pytest.mark.parametrize("quantizer", ["nf", "int"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_codebooks_sorted_in_unit_interval_with_zero(bits, quantizer):
    levels = codebook(bits, quantizer)
    expected = 2**bits if quantizer == "nf" else 2**bits - 1
    assert len(levels) == expected
    assert torch.all(levels[1:] > levels[:-1])
    assert levels.min() == -1 and levels.max() == 1 and 0.0 in levels.tolist()


def test_unknown_quantizer_is_an_error():
    with pytest.raises(ValueError, match="unknown quantizer 'fp'"):
        codebook(4, "fp")


# --- the quantizer ----------------------------------------------------------------------

SMALL_OPTIONS = st.builds(
    QuantConfig,
    b=st.sampled_from([2, 3, 4, 8]),
    b0=st.sampled_from([2, 3, 4, 8]),
    d1=st.sampled_from(["bf16", "fp16", "fp32"]),
    B0=st.sampled_from([16, 32, 64]),
    B1=st.sampled_from([16, 64]),
)


def _weight(rows, cols, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * 0.02


@settings(max_examples=60, deadline=None)
@given(qc=SMALL_OPTIONS, rows=st.integers(1, 48), cols=st.integers(1, 80), seed=st.integers(0, 99))
def test_dequantized_values_lie_on_codebook_times_scale(qc, rows, cols, seed):
    weight = _weight(rows, cols, seed)
    qt = quantize(weight, qc)
    deq = dequantize(qt)
    assert deq.shape == weight.shape
    scales = qt.scales().unsqueeze(-1).expand(-1, -1, qc.B0).reshape(-1)[: weight.numel()]
    levels = codebook(qc.b)
    expected = levels[qt.codes[: weight.numel()].long()] * scales
    assert torch.equal(deq.reshape(-1), expected)
    # Each weight takes its nearest level given its block's scale.
    normalized = weight.reshape(-1) / scales
    chosen = levels[qt.codes[: weight.numel()].long()]
    nearest = (normalized[:, None] - levels[None, :]).abs().min(dim=1).values
    assert torch.all((normalized - chosen).abs() <= nearest + 1e-5)


@settings(max_examples=30, deadline=None)
@given(qc=SMALL_OPTIONS, seed=st.integers(0, 99))
def test_error_falls_as_bits_rise(qc, seed):
    weight = _weight(64, 96, seed)
    errors = []
    for b in (2, 3, 4, 8):
        option = QuantConfig(b, qc.b0, qc.d1, qc.B0, qc.B1)
        errors.append(torch.sum((quantize_dequantize(weight, option) - weight) ** 2).item())
    assert errors[0] > errors[1] > errors[2] > errors[3]


def test_eight_bit_error_is_small():
    weight = _weight(256, 256)
    deq = quantize_dequantize(weight, QuantConfig(8, 8, "fp32", 16, 16))
    rel = torch.linalg.norm(deq - weight) / torch.linalg.norm(weight)
    assert rel < 0.01


def test_int_quantizer_uses_uniform_levels():
    weight = _weight(32, 64)
    qc = QuantConfig(4, 8, "fp32", 64, 16)
    qt = quantize(weight, qc, "int")
    assert qt.codes.max() <= 14
    rel = torch.linalg.norm(dequantize(qt) - weight) / torch.linalg.norm(weight)
    assert 0 < rel < 0.2


def test_padding_never_truncates_and_ignores_padding_in_offset():
    qc = QuantConfig(4, 8, "fp32", 16, 16)  # 256 weights per group
    weight = _weight(10, 30) + 1.0  # 300 weights, every |w| near 1 -> offset near 1
    qt = quantize(weight, qc)
    assert qt.codes.numel() == 512  # padded to two groups
    assert dequantize(qt).shape == weight.shape
    # Padding-only blocks have scale 0; were they counted, the offset would be 0.
    assert qt.offset > 0.9
    assert torch.allclose(dequantize(qt), weight, atol=0.15)


def test_all_zero_matrix_quantizes_to_zero():
    weight = torch.zeros(16, 32)
    assert torch.equal(quantize_dequantize(weight, QuantConfig(2, 2, "bf16", 16, 16)), weight)


def test_second_level_dtype_changes_only_scales():
    weight = _weight(64, 64)
    a = quantize(weight, QuantConfig(4, 8, "fp32", 64, 16))
    b = quantize(weight, QuantConfig(4, 8, "bf16", 64, 16))
    assert a.second_scales.dtype == torch.float32 and b.second_scales.dtype == torch.bfloat16
    rel = torch.linalg.norm(dequantize(a) - dequantize(b)) / torch.linalg.norm(dequantize(a))
    assert rel < 0.05


def test_quantization_is_deterministic():
    weight = _weight(40, 40)
    qc = QuantConfig(3, 4, "fp16", 32, 64)
    assert torch.equal(quantize_dequantize(weight, qc), quantize_dequantize(weight.clone(), qc))


def test_empty_tensor_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        quantize(torch.zeros(0, 4), QuantConfig(4, 8, "fp32", 64, 256))


# --- targets and model-level configurations --------------------------------------------

# Vocabulary 100 (the inputs below draw from it); BERT with three layers, two labels.
tiny_llama = functools.partial(tiny_models.tiny_llama, vocab_size=100)
tiny_bert = functools.partial(tiny_models.tiny_bert, layers=3, vocab_size=100, num_labels=2)


def test_llama_targets():
    targets = quantizable_targets(tiny_llama())
    assert len(targets) == 14
    assert [t.module_type for t in targets[:7]] == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    ]  # fmt: skip
    assert num_layers(targets) == 2
    assert not any("lm_head" in t.name or "embed" in t.name for t in targets)


def test_bert_targets_distinguish_the_two_output_denses():
    targets = quantizable_targets(tiny_bert())
    assert len(targets) == 18 and num_layers(targets) == 3
    by_name = {t.name: t.module_type for t in targets}
    assert by_name["bert.encoder.layer.0.attention.output.dense"] == "attn_output"
    assert by_name["bert.encoder.layer.0.output.dense"] == "ffn_output"
    assert not any("pooler" in n or "classifier" in n for n in by_name)


def test_unsupported_model_is_a_clear_error():
    with pytest.raises(ValueError, match="no quantizable linear layers"):
        quantizable_targets(torch.nn.Sequential(torch.nn.Linear(4, 4)))


def random_model_config(targets, seed=0):
    rng = np.random.default_rng(seed)
    return ModelQConfig.from_list(
        targets, [ALL_OPTIONS[i] for i in rng.integers(0, 432, len(targets))]
    )


def test_avg_bits_is_numel_weighted():
    targets = quantizable_targets(tiny_llama())
    mqc = random_model_config(targets)
    total = sum(t.numel for t in targets)
    expected = sum(t.numel * mqc.modules[t.name].bits for t in targets) / total
    assert mqc.avg_bits == pytest.approx(expected)
    uniform = ModelQConfig.uniform(targets, QuantConfig(4, 8, "fp32", 64, 256))
    assert uniform.avg_bits == pytest.approx(4.126953125)


def test_model_config_json_round_trip_and_encoding(tmp_path):
    targets = quantizable_targets(tiny_llama())
    mqc = random_model_config(targets, seed=3)
    mqc.budget = 5.0
    path = tmp_path / "q.json"
    mqc.save(path)
    data = json.loads(path.read_text())
    assert {"avg_bits", "modules"} <= set(data)
    loaded = ModelQConfig.load(path, targets)
    assert loaded.modules == mqc.modules and loaded.budget == 5.0
    vector = mqc.encode(targets)
    assert vector.shape == (5 * len(targets),)
    assert ModelQConfig.decode(vector, targets).modules == mqc.modules


def test_config_for_another_model_is_rejected(tmp_path):
    llama_targets = quantizable_targets(tiny_llama())
    bert_targets = quantizable_targets(tiny_bert())
    path = tmp_path / "q.json"
    random_model_config(llama_targets).save(path)
    with pytest.raises(ValueError, match="does not fit the model"):
        ModelQConfig.load(path, bert_targets)


def test_bad_config_files_are_clear_errors(tmp_path):
    targets = quantizable_targets(tiny_llama())
    path = tmp_path / "q.json"
    data = random_model_config(targets).to_dict()
    data["modules"][targets[0].name]["b"] = 5
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"module '.*q_proj'.*field 'b'"):
        ModelQConfig.load(path, targets)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ModelQConfig.load(path, targets)
    with pytest.raises(FileNotFoundError, match="configuration file not found"):
        ModelQConfig.load(tmp_path / "missing.json", targets)
    data = random_model_config(targets).to_dict()
    data["avg_bits"] = 2.0
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="avg_bits"):
        ModelQConfig.load(path, targets)


def test_apply_changes_only_targeted_weights():
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    targets = quantizable_targets(model)
    mqc = random_model_config(targets, seed=1)
    apply_qconfig(model, mqc)
    target_weights = {f"{t.name}.weight" for t in targets}
    for key, value in model.state_dict().items():
        if key in target_weights:
            assert not torch.equal(value, before[key]), key
        else:
            assert torch.equal(value, before[key]), key


def test_quantized_base_switches_without_reloading():
    model = tiny_bert()
    targets = quantizable_targets(model)
    base = QuantizedBase(model)
    x = torch.randint(0, 100, (2, 8))
    full = model(input_ids=x).logits
    a, b = random_model_config(targets, 1), random_model_config(targets, 2)
    base.apply(a)
    logits_a = model(input_ids=x).logits
    base.apply(b)
    base.apply(a)  # back again, from the cache
    assert torch.equal(model(input_ids=x).logits, logits_a)
    reference = apply_qconfig(tiny_bert(), a)
    assert torch.equal(reference(input_ids=x).logits, logits_a)
    base.restore()
    assert torch.equal(model(input_ids=x).logits, full)
    assert not math.isclose(float((logits_a - full).abs().max().detach()), 0.0)


def test_quantized_base_holds_the_configuration_in_use_once():
    """The model's targeted weights are the cache's tensors: the cache costs only the other
    configurations; weights handed in, and the originals, never alias the model."""
    model = tiny_bert()
    targets = quantizable_targets(model)
    base = QuantizedBase(model)
    a, b = random_model_config(targets, 1), random_model_config(targets, 2)
    one_config = sum(t.numel for t in targets) * 4  # fp32
    base.apply(a)
    assert base.cached_bytes_beyond_model() == 0
    assert base.misses == len(targets)  # each matrix quantized once
    base.apply(a)
    assert base.misses == len(targets)  # from the cache: nothing quantized, nothing to release
    base.apply(b)
    # a's entries are cached beyond the model (those b shares with a are the model's own)
    shared = sum(t.numel * 4 for t in targets if a.modules[t.name].index == b.modules[t.name].index)
    assert base.cached_bytes_beyond_model() == one_config - shared > 0
    x = torch.randint(0, 100, (2, 8))
    logits_b = model(input_ids=x).logits
    handed = {t.name: torch.zeros_like(base.linears[t.name].weight) for t in targets}
    base.set_weights(handed, "zeros")
    for w in handed.values():
        w.fill_(1.0)  # the caller's tensors: the model must not see this
    assert all(not base.linears[t.name].weight.detach().any() for t in targets)
    originals = {n: w.clone() for n, w in base.base_weights.items()}
    base.restore()
    for linear in base.linears.values():
        linear.weight.data.mul_(0.5)  # an in-place write into the restored weights
    assert all(torch.equal(base.base_weights[n], w) for n, w in originals.items())
    base.apply(b)  # from the cache, untouched by the writes above
    assert torch.equal(model(input_ids=x).logits, logits_b)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_comparison_encoding_equals_bucketize(bits):
    from coalora.quant.blockwise import encode_blocks
    from coalora.quant.codebooks import midpoints

    levels = codebook(bits)
    bounds = midpoints(levels)
    # Values exactly on midpoints, their neighbouring floats, out of range, and random.
    edge = torch.cat([bounds, torch.nextafter(bounds, torch.tensor(2.0)),
                      torch.nextafter(bounds, torch.tensor(-2.0)), torch.tensor([-3.0, 3.0, 0.0])])  # fmt: skip
    values = torch.cat([edge, torch.randn(2000, generator=torch.Generator().manual_seed(0))])
    blocks = values.view(1, 1, -1)
    codes = encode_blocks(blocks, torch.ones(1, 1), levels)
    assert torch.equal(codes.long(), torch.bucketize(blocks, bounds))


def test_fp16_second_level_scale_does_not_overflow():
    weight = _weight(16, 64)
    weight[0, :16] = 1e5
    deq = quantize_dequantize(weight, QuantConfig(4, 8, "fp16", 16, 16))
    assert torch.isfinite(deq).all()
