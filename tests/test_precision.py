"""The compute dtype (coalora.precision): what ``auto`` picks, what a bf16 hold keeps in fp32,
that every method trains in both dtypes and records it, that bf16 stays close to fp32,
determinism and resume per dtype, and that the claims table names the dtypes it compares."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from baselines import gptq_lora
from coalora import precision
from coalora.data import load_task, make_batches
from coalora.evaluate import BareBase, EvalSettings, evaluate_configs
from coalora.lora import LoraLinear, inject_lora
from coalora.methods import get_method, registered_methods
from coalora.models import load_model
from coalora.quant import ALL_OPTIONS, ModelQConfig, QuantConfig, QuantizedBase
from coalora.quant.apply import narrowest_exact
from coalora.runner import run_training
from coalora.train import TrainSettings, train
from coalora.verdicts import claims

NF3 = QuantConfig(3, 8, "fp32", 64, 256)
SETTINGS = dict(steps=4, lr=1e-2, batch_size=4, max_length=32, r=8, alpha=16)
FAST_OPTIONS = {"lqlora": {"iters": 2}, "loftq": {"iters": 1}, "gptq-lora": {"calib_samples": 4}}
DTYPES = ["fp32", "bf16"]


@pytest.fixture
def units(monkeypatch):
    """Pretend this CPU has bf16 matrix units (True) or not (False)."""

    def pretend(has: bool):
        monkeypatch.setattr(precision, "bf16_matrix_units", lambda: has)
        monkeypatch.setattr(precision, "_warned", set())

    return pretend


def test_auto_is_bf16_exactly_where_the_device_has_bf16_units(units, caplog):
    units(True)
    assert precision.resolve("auto", "cpu") == torch.bfloat16
    assert precision.resolve("fp32", "cpu") == torch.float32
    units(False)
    assert precision.resolve("auto", "cpu") == torch.float32
    with caplog.at_level(logging.WARNING, logger="coalora.precision"):
        assert precision.resolve("bf16", "cpu") == torch.bfloat16
        assert precision.resolve("bf16", "cpu") == torch.bfloat16
    slow = [r for r in caplog.records if "several times slower" in r.getMessage()]
    assert len(slow) == 1  # one warning per process, not per call
    with pytest.raises(ValueError, match="compute_dtype must be one of auto, bf16, fp32"):
        precision.resolve("fp16", "cpu")
    with pytest.raises(ValueError, match="'compute_dtype'.*got 'half'"):
        TrainSettings(compute_dtype="half")
    with pytest.raises(ValueError, match="'compute_dtype'"):
        EvalSettings(compute_dtype="float64")


def test_a_bf16_hold_keeps_what_trains_in_fp32_and_returns_fp32_logits():
    loaded = load_model("tiny-llama")
    model = loaded.model
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    wrappers = inject_lora(model, r=4, alpha=4)
    batch = {"input_ids": torch.tensor([[1, 5, 9, 3, 7]])}
    with torch.no_grad():
        reference = model(**batch).logits
    precision.hold(model, torch.bfloat16)
    for name, p in model.named_parameters():
        assert p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16), name
    assert all(w.lora_A.dtype == torch.float32 for w in wrappers.values())
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    logits = model(**batch, labels=batch["input_ids"])
    assert logits.logits.dtype == torch.float32 and logits.loss.dtype == torch.float32
    # bf16 has 8 mantissa bits: logits agree with fp32 to a few hundredths, not exactly.
    assert not torch.equal(logits.logits, reference)
    torch.testing.assert_close(logits.logits.detach(), reference, atol=0.1, rtol=0.05)
    logits.loss.backward()  # gradients reach the fp32 factors
    assert all(w.lora_A.grad.dtype == torch.float32 for w in wrappers.values())
    # Holding in fp32 again gives back the plain model (fp32 weights, the class's forward).
    precision.hold(model, torch.float32)
    assert "forward" not in vars(model)
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("alpha", [16, 12])  # scaling 1 (fused GEMM) and 0.75 (separate ops)
def test_the_lora_update_in_bf16_is_as_accurate_as_bf16_allows(alpha):
    """Under autocast the fused path accumulates base + scaling * B (I + M) A x in one GEMM, so
    its bits are not those of the separate bf16 ops; both stay within bf16's rounding of the
    fp32 result, with and without autograd."""
    gen = torch.Generator().manual_seed(0)
    layer = LoraLinear(torch.nn.Linear(48, 96), r=16, alpha=alpha, generator=gen)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.1)
    layer.set_mixing(torch.randn(16, 16, generator=gen) * 0.3)
    x = torch.randn(3, 7, 48, generator=gen)
    expected = layer(x).detach()
    layer.base_layer.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trained = layer(x.to(torch.bfloat16))
        with torch.no_grad():
            served = layer(x.to(torch.bfloat16))
    for got in (trained, served):
        assert got.dtype == torch.bfloat16
        scale = expected.abs().max()
        assert (got.float() - expected).abs().max() <= 2**-6 * scale
    trained.float().sum().backward()
    assert layer.lora_A.grad.dtype == torch.float32 and torch.isfinite(layer.lora_A.grad).all()


def test_originals_are_held_exactly_in_the_narrowest_dtype():
    exact = torch.randn(64, 32).to(torch.bfloat16).to(torch.float32)  # bf16 values in fp32
    assert narrowest_exact(exact).dtype == torch.bfloat16
    full = torch.randn(64, 32)
    assert narrowest_exact(full).dtype == torch.float32
    halves = torch.randn(8, 8).to(torch.bfloat16)
    assert narrowest_exact(halves).dtype == torch.bfloat16  # never upcast
    # The quantizer works from the same values, whatever holds them: the same bits.
    model = load_model("tiny-llama").model
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(module.weight.to(torch.bfloat16).to(torch.float32))
    qbase = QuantizedBase(model, cache_bytes=0)
    name = qbase.targets[0].name
    assert qbase.base_weights[name].dtype == torch.bfloat16
    wide = qbase.linears[name].weight.detach().clone()
    from coalora.quant import quantize_dequantize

    assert torch.equal(qbase.dequantized(name, NF3), quantize_dequantize(wide, NF3))
    qbase.restore()
    assert torch.equal(qbase.linears[name].weight, wide)


def _train_configs(method: str, targets):
    if get_method(method).fixed_configs(targets) is not None:
        return None
    return ModelQConfig.uniform(targets, NF3, name="nf3")


def _train_tiny(method: str, compute_dtype: str, model: str, tmp_path, name: str):
    """``run_training`` of ``method`` on ``model`` (tiny-llama or a copy of it) for the fast
    settings, into ``tmp_path / name``: CoA-LoRA on two budgets, the others on NF3 unless they
    fix their own configurations. Skips GPTQ-LoRA where llmcompressor is missing."""
    if method == "gptq-lora" and not gptq_lora.llmcompressor_available():
        pytest.skip(f"llmcompressor not installed ({gptq_lora.INSTALL_HINT})")
    targets = QuantizedBase(load_model("tiny-llama").model).targets
    mqc = _train_configs(method, targets)
    qconfig = None
    if mqc is not None:
        qconfig = tmp_path / "nf3.json"
        mqc.save(qconfig)
    budgets = [2.5, 3.0] if method == "coalora" else None
    settings = TrainSettings(
        **SETTINGS,
        compute_dtype=compute_dtype,
        method_options={method: FAST_OPTIONS[method]} if method in FAST_OPTIONS else {},
    )
    return run_training(
        model=model,
        task="bible-lm",
        method=method,
        settings=settings,
        out=tmp_path / name,
        qconfig=None if budgets else qconfig,
        budgets=budgets,
        max_train=16,
        progress=False,
    )


@pytest.mark.parametrize("compute_dtype", DTYPES)
@pytest.mark.parametrize("method", sorted(registered_methods()))
def test_every_method_trains_in_either_dtype_and_records_it(method, compute_dtype, tmp_path):
    out = _train_tiny(method, compute_dtype, "tiny-llama", tmp_path, "ckpt")

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["compute_dtype"] == precision.COMPUTE_DTYPES[compute_dtype]
    assert np.isfinite(manifest["final_loss"])
    weights = load_file(out / "weights.safetensors")
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}


def _tiny_bert(compute_dtype: str, seed: int = 0, **overrides):
    settings = TrainSettings(
        **{**SETTINGS, "steps": 6, **overrides}, seed=seed, compute_dtype=compute_dtype
    )
    task = load_task("bible-testament", max_train=32, max_eval=16)
    loaded = load_model("tiny-bert", kind="classification", num_labels=2, seed=seed)
    qbase = QuantizedBase(loaded.model)
    rng = np.random.default_rng(seed)
    configs = [
        ModelQConfig.from_list(
            qbase.targets, [ALL_OPTIONS[i] for i in rng.choice(100, len(qbase.targets))]
        )
        for _ in range(3)
    ]
    runner = get_method("coalora")(loaded, qbase, settings, configs)
    batches = make_batches(task, loaded.tokenizer, "train", 4, 32, seed)
    return runner, batches, settings


@pytest.mark.parametrize("compute_dtype", DTYPES)
def test_the_same_seed_gives_the_same_numbers_in_each_dtype(compute_dtype, tmp_path):
    runs = []
    for _ in range(2):
        runner, batches, settings = _tiny_bert(compute_dtype)
        runs.append((train(runner, batches.batch, settings, progress=False), runner))
    assert runs[0][0].losses == runs[1][0].losses
    assert runs[0][0].dtype == precision.COMPUTE_DTYPES[compute_dtype]
    for key, value in runs[0][1].trainable_state().items():
        assert torch.equal(value, runs[1][1].trainable_state()[key]), key


@pytest.mark.parametrize("compute_dtype", DTYPES)
def test_a_run_resumed_in_its_dtype_matches_the_uninterrupted_one(compute_dtype, tmp_path):
    runner, batches, settings = _tiny_bert(compute_dtype, steps=8, save_every=3)
    full = train(runner, batches.batch, settings, out=tmp_path / "a", progress=False)
    full_state = runner.trainable_state()
    runner, batches, settings = _tiny_bert(compute_dtype, steps=8, save_every=3)
    train(runner, batches.batch, settings, out=tmp_path / "b", progress=False, stop_after=5)
    runner, batches, settings = _tiny_bert(compute_dtype, steps=8, save_every=3)
    resumed = train(runner, batches.batch, settings, out=tmp_path / "b", progress=False)
    assert resumed.losses == full.losses
    for key, value in full_state.items():
        assert torch.equal(value, runner.trainable_state()[key]), key


def test_resume_state_of_another_dtype_is_refused(tmp_path):
    runner, batches, settings = _tiny_bert("bf16", steps=8, save_every=2)
    train(runner, batches.batch, settings, out=tmp_path / "c", progress=False, stop_after=3)
    runner, batches, settings = _tiny_bert("fp32", steps=8, save_every=2)
    with pytest.raises(ValueError, match="ran in bfloat16, this run computes in float32"):
        train(runner, batches.batch, settings, out=tmp_path / "c", progress=False)


def test_bf16_training_stays_close_to_fp32():
    losses = {}
    for dtype in DTYPES:
        runner, batches, settings = _tiny_bert(dtype, steps=6)
        losses[dtype] = train(runner, batches.batch, settings, progress=False).losses
    assert losses["bf16"] != losses["fp32"]  # it did compute in bf16
    np.testing.assert_allclose(losses["bf16"], losses["fp32"], rtol=0.02)


def test_records_name_the_compute_dtype_and_claims_name_a_mixture():
    records = {}
    for dtype in DTYPES:
        [records[dtype]] = evaluate_configs(
            BareBase("tiny-llama"), [3.0], "bible-lm",
            settings=EvalSettings(limit=2, window=32, lm_eval_tasks=[], compute_dtype=dtype),
        )  # fmt: skip
    assert records["fp32"]["protocol"]["dtype"] == "float32"
    assert records["bf16"]["protocol"]["dtype"] == "bfloat16"
    ppl = {d: r["metrics"]["perplexity"] for d, r in records.items()}
    assert ppl["bf16"] != ppl["fp32"] and abs(np.log(ppl["bf16"] / ppl["fp32"])) < 0.05

    def rows(dtype, train_dtype=None):
        protocol = {"dtype": dtype}
        if train_dtype:
            protocol |= {"trained_method": "coalora", "train_dtype": train_dtype}
        return pd.DataFrame(
            {"protocol": [protocol], "seed": [0], "hashes.checkpoint": ["x"],
             "train_steps": [4], "serves": ["shared"]}
        )  # fmt: skip

    assert claims.compute_dtypes(rows("bfloat16", "float32")) == ["bfloat16", "float32"]
    same = claims.deviations([("a", rows("float32", "float32")), ("b", rows("float32"))])
    assert "dtype" not in same
    mixed = claims.deviations([("a", rows("bfloat16", "bfloat16")), ("b", rows("float32"))])
    assert "mixed compute dtypes (a bfloat16, b float32)" in mixed


def test_on_cuda_auto_asks_the_gpu_not_the_cpu(monkeypatch, units):
    """The same code decides for a GPU (no branch only a GPU runs): bf16 where torch says the
    device supports it natively, whatever the CPU has."""
    units(False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert precision.resolve("auto", "cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert precision.resolve("auto", "cuda") == torch.float32


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    """tiny-llama shipped as a bf16 checkpoint, and the same values shipped in fp32."""
    loaded = load_model("tiny-llama")
    dirs = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        out = tmp_path_factory.mktemp(f"tiny-llama-{name}")
        loaded.model.to(torch.bfloat16).to(dtype).save_pretrained(out)
        loaded.tokenizer.save_pretrained(out)
        dirs[name] = out
    return dirs


def test_a_bf16_checkpoint_is_loaded_and_its_originals_held_in_bf16(bf16_checkpoint):
    model = load_model(str(bf16_checkpoint["bf16"])).model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # never upcast at load
    qbase = QuantizedBase(model)
    assert {w.dtype for w in qbase.base_weights.values()} == {torch.bfloat16}
    # a classifier's new head is drawn in fp32, whatever the checkpoint's dtype
    classifier = load_model(str(bf16_checkpoint["bf16"]), kind="classification", num_labels=2)
    assert {p.dtype for p in classifier.model.parameters()} == {torch.float32}


def test_the_fisher_cost_table_of_a_bf16_checkpoint_is_computed_in_fp32(bf16_checkpoint):
    from coalora.budgets import AllocationSpec, costs_for

    spec = AllocationSpec(fisher_task="bible-lm", max_elements=4096)
    tables = []
    for name in ("bf16", "fp32"):
        loaded = load_model(str(bf16_checkpoint[name]))
        tables.append(costs_for(loaded, QuantizedBase(loaded.model), spec, cache=False))
    assert torch.equal(tables[0], tables[1])


@pytest.mark.parametrize("compute_dtype", DTYPES)
@pytest.mark.parametrize("method", ["coalora", "qlora-bnb", "gptq-lora"])
def test_a_bf16_checkpoint_trains_as_its_fp32_upcast_does(
    bf16_checkpoint, method, compute_dtype, tmp_path
):
    """Loading a bf16 checkpoint in bf16 changes no number: the same losses and adapters as
    from the same values shipped in fp32, in either compute dtype (GPTQ's and bitsandbytes'
    set-ups read the base: ``setup_reads_base`` holds it in fp32 for them)."""
    runs = []
    for name in ("bf16", "fp32"):
        out = _train_tiny(method, compute_dtype, str(bf16_checkpoint[name]), tmp_path, name)
        manifest = json.loads((out / "manifest.json").read_text())
        runs.append((manifest["loss_first_last"], load_file(out / "weights.safetensors")))
    assert runs[0][0] == runs[1][0]
    assert runs[0][1].keys() == runs[1][1].keys()
    for key, value in runs[0][1].items():
        assert torch.equal(value, runs[1][1][key]), key
