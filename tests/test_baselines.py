"""Baselines on the shared engine: each trains, lowers the loss, builds its evaluation model
and its export; bad input fails clearly; the decompositions and quantizers behave as claimed."""

import json

import numpy as np
import pytest
import torch

from baselines import gptq_lora
from baselines.lowrank import loftq_decompose, lq_decompose
from baselines.qlora_bnb import BNB_CONFIG_FILE, BNB_NF4, bnb_nf4_dequantized
from coalora.data import load_task, make_batches
from coalora.export import ADAPTER_MANIFEST
from coalora.methods import get_method, load_adapter, method_traits
from coalora.models import load_model
from coalora.quant import ALL_OPTIONS, ModelQConfig, QuantConfig, QuantizedBase, nf_codebook
from coalora.quant import quantize_dequantize as qdq
from coalora.quant.blockwise import encode_blocks, first_level_scales, pad_and_block
from coalora.runner import load_trained, run_training
from coalora.train import TrainSettings, train

# A small training set seen for several epochs, so the random tiny model can fit it quickly.
# fp32 whatever the CPU (auto would be bf16 on one with bf16 units): these tests compare
# logits across paths (export, reload) at fp32 tolerances; tests/test_precision.py trains
# every method in bf16.
SETTINGS = dict(
    steps=12, lr=1e-2, batch_size=8, max_length=32, r=8, alpha=16, configs_per_step=2,
    compute_dtype="fp32",
)  # fmt: skip
NF2 = QuantConfig(2, 8, "fp32", 32, 256)  # low bits: visible quantization damage
FAST_OPTIONS = {
    "lqlora": {"iters": 3},
    "loftq": {"iters": 2},
    "gptq-lora": {"calib_samples": 4},
}
needs_llmcompressor = pytest.mark.skipif(
    not gptq_lora.llmcompressor_available(),
    reason=f"llmcompressor not installed ({gptq_lora.INSTALL_HINT})",
)


@pytest.fixture(scope="module")
def lm_task():
    return load_task("bible-lm", max_train=64, max_eval=16)


def build(method, task, option=NF2, options=None, **overrides):
    settings = TrainSettings(**{**SETTINGS, **overrides})
    loaded = load_model("tiny-llama", seed=settings.seed)
    qbase = QuantizedBase(loaded.model)
    configs = [ModelQConfig.uniform(qbase.targets, option, name="test")]
    kw = {"options": options} if options is not None else {}
    runner = get_method(method)(loaded, qbase, settings, configs, **kw)
    batches = make_batches(
        task, loaded.tokenizer, "train", settings.batch_size, settings.max_length, 0
    )
    return runner, batches, settings


@torch.no_grad()
def mean_loss(model, batches, n=4):
    return float(np.mean([model(**batches.batch(k)).loss.item() for k in range(n)]))


@torch.no_grad()
def logits(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_every_baseline_is_registered():
    names = {"qlora", "qlora-bnb", "lqlora", "loftq", "gptq-lora", "shared-lora", "full-ft"}
    names |= {"lora-fp"}
    assert all(get_method(n).name == n for n in names)
    per_config = {n for n in names if get_method(n).per_config}
    assert per_config == {"qlora", "qlora-bnb", "lqlora", "loftq", "gptq-lora"}
    assert get_method("shared-lora").default_budgets == (2.5, 3.0, 3.5, 4.0)
    # The traits the workflow and the report read, declared once on each class.
    traits = method_traits()
    assert set(traits) == names | {"coalora"}
    assert {n: t["serves"] for n, t in traits.items()} == {
        "coalora": "any",
        "shared-lora": "shared",
        "qlora": "trained",
        "lqlora": "trained",
        "loftq": "trained",
        "gptq-lora": "trained",
        "qlora-bnb": "fixed",
        "full-ft": "full-precision",
        "lora-fp": "full-precision",
    }
    assert [n for n, t in traits.items() if t["own_allocation"]] == ["lqlora"]
    assert traits["lqlora"]["options"] == ["iters", "randomized", "oversampling", "fisher_task"]


def test_registry_refuses_duplicates_and_names_unknown_methods(monkeypatch):
    import coalora.methods as methods

    class Impostor(methods.Method):
        name = "qlora"

    with pytest.raises(ValueError, match="method 'qlora' is registered twice: by entry point"):
        methods.register_method(Impostor, "a test")
    with pytest.raises(TypeError, match="not a coalora.methods.Method subclass"):
        methods.register_method(dict)
    with pytest.raises(ValueError, match="unknown method 'qlorra'; available: coalora, full-ft"):
        get_method("qlorra")
    # A plug-in package adds a method by declaring an entry point in the group.
    monkeypatch.setattr(methods, "_METHODS", {})
    monkeypatch.setattr(methods, "_SOURCES", {})
    monkeypatch.setattr(methods, "_LOADED", False)

    class Point:
        def __init__(self, name, value, cls):
            self.name, self.value, self._cls = name, value, cls

        def load(self):
            return self._cls

    class PlugIn(methods.Method):
        name = "plug-in"

    points = [Point("plug-in", "pkg:PlugIn", PlugIn), Point("plug-in", "other:PlugIn", PlugIn)]
    monkeypatch.setattr(methods, "entry_points", lambda group: points)
    with pytest.raises(ValueError, match="'plug-in' is registered twice: by entry point 'pkg:Plu"):
        methods.registered_methods()
    monkeypatch.setattr(methods, "_METHODS", {})
    monkeypatch.setattr(methods, "_LOADED", False)
    monkeypatch.setattr(methods, "entry_points", lambda group: [Point("x", "pkg:PlugIn", PlugIn)])
    with pytest.raises(ValueError, match="entry point 'x' = 'pkg:PlugIn' names a method called"):
        methods.registered_methods()


def test_options_are_keyed_by_method(lm_task):
    """Each method reads only its own entry of ``method_options``: LoftQ never takes
    LQ-LoRA's ``iters``; unknown methods and options are named."""
    settings = TrainSettings(**SETTINGS, method_options={"lqlora": {"iters": 7}})
    assert get_method("loftq").build_options(settings).iters == 1
    assert get_method("lqlora").build_options(settings).iters == 7
    assert get_method("qlora").build_options(settings) is None
    with pytest.raises(ValueError, match=r"names unknown method\(s\) \['lqlorra'\]"):
        get_method("qlora").build_options(TrainSettings(method_options={"lqlorra": {}}))
    with pytest.raises(ValueError, match="method 'qlora' takes no options"):
        get_method("qlora").build_options(TrainSettings(method_options={"qlora": {"iters": 1}}))


@pytest.mark.parametrize(
    "method,option",
    [
        ("qlora", NF2),
        ("lqlora", NF2),
        ("loftq", NF2),
        ("qlora-bnb", BNB_NF4),
        pytest.param("gptq-lora", NF2, marks=needs_llmcompressor),
        ("full-ft", NF2),
        ("lora-fp", NF2),  # the configuration given is ignored: trained and exported unquantized
    ],
)
def test_training_lowers_the_loss_and_export_reloads(method, option, lm_task, tmp_path):
    runner, batches, settings = build(method, lm_task, option, FAST_OPTIONS.get(method))
    [mqc] = runner.train_configs
    before = mean_loss(runner.prepare_eval(mqc), batches)
    result = train(runner, batches.batch, settings, progress=False)
    model = runner.prepare_eval(mqc)
    after = mean_loss(model, batches)
    assert result.steps == settings.steps and result.seconds > 0
    assert after < before - 0.05, (before, after)

    # The exported artefact, loaded onto a fresh base model, is the same model.
    batch = batches.batch(0)
    expected = logits(model, batch)
    out = runner.export(runner.train_configs[0], tmp_path / "export", "tiny-llama")
    if method == "qlora-bnb":
        assert json.loads((out / BNB_CONFIG_FILE).read_text())["bnb_4bit_quant_type"] == "nf4"
    # One loader for every method: the directory's manifest picks the method's own (residual
    # base, GPTQ base, bitsandbytes, a whole model, ...); onto a given fresh base, or the base
    # the manifest names.
    assert json.loads((out / ADAPTER_MANIFEST).read_text())["method"] == method
    for reloaded in (load_adapter(out, load_model("tiny-llama").model), load_adapter(out)):
        torch.testing.assert_close(logits(reloaded.eval(), batch), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "method,option",
    [
        ("qlora-bnb", BNB_NF4),
        ("lqlora", NF2),
        pytest.param("gptq-lora", NF2, marks=needs_llmcompressor),
    ],
)
def test_classifier_state_round_trips(method, option):
    """On a sequence classifier the task head trains with the adapter and is saved with it."""
    task = load_task("bible-testament", max_train=32, max_eval=8)
    settings = TrainSettings(**{**SETTINGS, "steps": 3})

    def build_classifier():
        loaded = load_model("tiny-bert", kind="classification", num_labels=2)
        qbase = QuantizedBase(loaded.model)
        configs = [ModelQConfig.uniform(qbase.targets, option)]
        kw = {"options": FAST_OPTIONS[method]} if method in FAST_OPTIONS else {}
        return get_method(method)(loaded, qbase, settings, configs, **kw), loaded.tokenizer

    runner, tokenizer = build_classifier()
    batches = make_batches(task, tokenizer, "train", 8, 32, 0)
    head = {k: v.clone() for k, v in runner.trainable_state().items() if "classifier" in k}
    assert head
    train(runner, batches.batch, settings, progress=False)
    state = runner.trainable_state()
    assert any(not torch.equal(state[k], v) for k, v in head.items())  # the head trained
    expected = logits(runner.prepare_eval(runner.train_configs[0]), batches.batch(0))

    fresh, _ = build_classifier()
    fresh.load_trainable_state(state)
    got = logits(fresh.prepare_eval(fresh.train_configs[0]), batches.batch(0))
    torch.testing.assert_close(got, expected)


def test_full_ft_needs_no_configuration_and_trains_every_weight(lm_task):
    settings = TrainSettings(**{**SETTINGS, "steps": 2})
    loaded = load_model("tiny-llama")
    qbase = QuantizedBase(loaded.model)
    runner = get_method("full-ft")(loaded, qbase, settings, [])
    assert runner.fixed_configs(qbase.targets) == [] and runner.configs_for_step(None, 2) == [None]
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    batches = make_batches(lm_task, loaded.tokenizer, "train", 8, 32, 0)
    train(runner, batches.batch, settings, progress=False)
    changed = [n for n, p in loaded.model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)  # embeddings, norms and head included
    state = runner.trainable_state()
    other = load_model("tiny-llama")
    fresh = get_method("full-ft")(other, QuantizedBase(other.model), settings, [])
    fresh.load_trainable_state(state)
    torch.testing.assert_close(
        logits(fresh.prepare_eval(None), batches.batch(0)),
        logits(runner.prepare_eval(None), batches.batch(0)),
    )


def test_lora_fp_trains_lora_on_the_unquantized_base_and_exports_a_plain_adapter(tmp_path):
    """The full-precision LoRA reference through the workflow's own command (train, then
    evaluate under its one configuration in the same process): only the LoRA factors train,
    the base is never quantized, its record is the full-precision row, and its export is a
    peft adapter over the unquantized base with the same logits."""
    from peft import PeftModel

    from coalora.cli import main
    from coalora.evaluate.results import FULL_PRECISION
    from coalora.export import QCONFIG_FILE

    ckpt, record_path = tmp_path / "ckpt", tmp_path / "eval" / "full-precision.json"
    args = ["train", "--model", "tiny-llama", "--task", "bible-lm", "--method", "lora-fp"]
    args += ["--max-train", "64", "--steps", "8", "--out", str(ckpt)]
    for key, value in dict(batch_size=4, max_length=32, r=4, alpha=8, lr=0.01).items():
        args += ["--set", f"{key}={value}"]
    args += ["--evaluate-out", str(record_path), "--label", "lora-fp"]
    args += ["--window", "32", "--limit", "4", "--lm-eval-tasks"]
    assert main(args) == 0
    manifest = json.loads((ckpt / "manifest.json").read_text())
    first, last = manifest["loss_first_last"]
    assert last < first and manifest["num_train_configs"] == 0
    record = json.loads(record_path.read_text())
    assert (record["method"], record["config_name"]) == ("lora-fp", FULL_PRECISION)
    assert (record["quantizer"], record["avg_bits"], record["seen"]) == ("none", 32.0, None)
    assert record["protocol"]["serves"] == "full-precision"

    runner, _ = load_trained(ckpt)
    pretrained = load_model("tiny-llama").model
    assert runner.wrappers and all(w.lora_B.abs().max() > 0 for w in runner.wrappers.values())
    base = {n: p for n, p in runner.model.named_parameters() if "lora_" not in n}
    fresh = dict(pretrained.named_parameters())
    # The base weights are the pretrained ones, never quantized (the wrapper renames them).
    assert len(base) == len(fresh)
    for (name, p), q in zip(base.items(), fresh.values(), strict=True):
        assert torch.equal(p, q), name
    input_ids = torch.tensor([[1, 5, 9, 13, 2, 40, 33, 7], [3, 3, 60, 21, 8, 0, 11, 19]])
    with torch.no_grad():
        expected = runner.prepare_eval(None)(input_ids=input_ids).logits
        assert (expected - pretrained(input_ids=input_ids).logits).abs().max() > 1e-3
    out = runner.export(None, tmp_path / "export", "tiny-llama")
    assert not (out / QCONFIG_FILE).exists()
    # peft alone, on a fresh unquantized base: no coalora code.
    loaded = PeftModel.from_pretrained(load_model("tiny-llama").model, str(out)).eval()
    with torch.no_grad():
        assert (loaded(input_ids=input_ids).logits - expected).abs().max().item() <= 1e-5


def test_shared_lora_trains_one_adapter_under_several_configurations(lm_task):
    settings = TrainSettings(**SETTINGS)
    loaded = load_model("tiny-llama")
    qbase = QuantizedBase(loaded.model)
    rng = np.random.default_rng(0)
    pool = [i for i, qc in enumerate(ALL_OPTIONS) if qc.b <= 3]
    configs = [
        ModelQConfig.from_list(
            qbase.targets, [ALL_OPTIONS[i] for i in rng.choice(pool, len(qbase.targets))]
        )
        for _ in range(3)
    ]
    runner = get_method("shared-lora")(loaded, qbase, settings, configs)
    batches = make_batches(lm_task, loaded.tokenizer, "train", 8, 32, 0)
    params = runner.parameters()
    before = [mean_loss(runner.prepare_eval(m), batches) for m in configs]
    train(runner, batches.batch, settings, progress=False)
    after = [mean_loss(runner.prepare_eval(m), batches) for m in configs]
    assert all(a < b for a, b in zip(after, before, strict=True)), (before, after)
    # One adapter (the same parameters whatever the configuration), no mapper.
    runner.activate(configs[1])
    assert [id(p) for p in runner.parameters()] == [id(p) for p in params] and runner.mapper is None
    assert set(runner.trainable_state()) == {
        k for n in runner.wrappers for k in (f"{n}.lora_A", f"{n}.lora_B")
    }


def test_run_training_writes_the_manifest_and_the_configuration_provenance(tmp_path):
    loaded = load_model("tiny-llama")
    qconfig = tmp_path / "nf2.json"
    ModelQConfig.uniform(QuantizedBase(loaded.model).targets, NF2).save(qconfig)
    out = run_training(
        model="tiny-llama", task="bible-lm", method="loftq", settings=TrainSettings(**{**SETTINGS, "steps": 3}),
        out=tmp_path / "ckpt", qconfig=str(qconfig), max_train=64, progress=False,
    )  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["method"] == "loftq" and manifest["steps"] == 3 and manifest["train_seconds"] > 0
    )
    [saved] = json.loads((out / "train_configs.json").read_text())
    assert saved["baseline"]["options"] == {"iters": 1, "backend": "coalora"}
    assert saved["baseline"]["init_seconds"] > 0

    method, _ = load_trained(out)
    assert method.initialised and method.init_seconds == 0.0  # restored, not decomposed again
    assert set(method.trainable_state()) == set(load_trained(out)[0].trainable_state())


def test_lqlora_budget_allocates_over_the_decomposition_costs(tmp_path, monkeypatch):
    """``--budget`` for LQ-LoRA: the ILP over the errors of W - SVD_r(W), r = the LoRA rank."""
    from coalora.budgets import AllocationSpec, configs_for_budgets

    monkeypatch.setenv("COALORA_CACHE", str(tmp_path / "cache"))
    settings = TrainSettings(**{**SETTINGS, "steps": 1})
    out = run_training(
        model="tiny-llama", task="bible-lm", method="lqlora", settings=settings,
        out=tmp_path / "ckpt", budget=2.5, max_train=16, progress=False,
    )  # fmt: skip
    [trained] = json.loads((out / "train_configs.json").read_text())
    loaded = load_model("tiny-llama")
    [own] = configs_for_budgets(loaded, [2.5], AllocationSpec(lowrank_rank=SETTINGS["r"]))
    [plain] = configs_for_budgets(loaded, [2.5])
    trained = ModelQConfig.from_dict(trained)
    assert trained.key() == own.key() and trained.avg_bits <= 2.5
    assert own.key() != plain.key()  # the low-rank part changes what is worth bits


def test_reloaded_lowrank_state_rebuilds_the_same_model(lm_task):
    runner, batches, settings = build("lqlora", lm_task, NF2, {"iters": 2}, steps=2)
    train(runner, batches.batch, settings, progress=False)
    [mqc] = runner.train_configs
    expected = logits(runner.prepare_eval(mqc), batches.batch(0))
    state = runner.trainable_state()
    assert any(k.endswith(".base_lowrank.S1") for k in state)

    fresh, _, _ = build("lqlora", lm_task, NF2, {"iters": 2}, steps=2)
    fresh.load_trainable_state(state)
    assert fresh.init_seconds == 0.0  # no decomposition: S comes from the state
    torch.testing.assert_close(logits(fresh.prepare_eval(mqc), batches.batch(0)), expected)


# --- bad input -------------------------------------------------------------------------------------


def test_per_configuration_methods_need_exactly_one_configuration(lm_task, tmp_path):
    with pytest.raises(ValueError, match="trains per configuration: give --budget or --qconfig"):
        run_training(
            model="tiny-llama", task="bible-lm", method="lqlora", settings=TrainSettings(**SETTINGS),
            out=tmp_path / "x", max_train=8, progress=False,
        )  # fmt: skip
    loaded = load_model("tiny-llama")
    qbase = QuantizedBase(loaded.model)
    two = [ModelQConfig.uniform(qbase.targets, NF2), ModelQConfig.uniform(qbase.targets, BNB_NF4)]
    with pytest.raises(ValueError, match="one configuration per run"):
        get_method("loftq")(loaded, qbase, TrainSettings(**SETTINGS), two)


def test_bad_configurations_and_options_are_named(lm_task, monkeypatch):
    with pytest.raises(ValueError, match="bitsandbytes NF4 with double quantization"):
        build("qlora-bnb", lm_task, NF2)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['iterz'\] for method 'lqlora'"):
        build("lqlora", lm_task, NF2, {"iterz": 3})
    with pytest.raises(ValueError, match="'iters' must be an integer >= 1"):
        build("loftq", lm_task, NF2, {"iters": 0})
    with pytest.raises(ValueError, match="LoRA rank r=48 exceeds the smaller side of"):
        build("lqlora", lm_task, NF2, r=48)[0].parameters()  # k_proj of tiny-llama is 32 x 64
    with pytest.raises(ValueError, match="backend 'peft' .* b=4 and B0=64"):
        build("loftq", lm_task, NF2, {"backend": "peft"})
    monkeypatch.setattr(gptq_lora, "llmcompressor_available", lambda: False)
    with pytest.raises(
        ValueError, match=r"needs llmcompressor.*pip install 'llmcompressor==0\.14\.\*'"
    ):
        build("gptq-lora", lm_task, NF2)


@needs_llmcompressor
def test_gptq_uses_each_matrix_bits_and_group_size(lm_task):
    settings = TrainSettings(**SETTINGS)
    loaded = load_model("tiny-llama")
    qbase = QuantizedBase(loaded.model)
    options = [QuantConfig(b, 8, "fp32", B0, 256) for b, B0 in [(2, 32), (3, 16), (4, 64), (8, 32)]]
    mqc = ModelQConfig.from_list(qbase.targets, [options[i % 4] for i in range(len(qbase.targets))])
    runner = get_method("gptq-lora")(loaded, qbase, settings, [mqc], options={"calib_samples": 4})
    for t in runner.targets:
        qc, weight = mqc.modules[t.name], runner.gptq_weights[t.name]
        groups = weight.reshape(t.shape[0], -1, qc.B0)  # rows x groups x B0 columns
        distinct = max(
            len(torch.unique(groups[r, g])) for r in range(4) for g in range(groups.shape[1])
        )
        assert distinct <= 2**qc.b, (t.name, qc, distinct)
        assert not torch.equal(weight, qbase.base_weights[t.name])
    low = [t.name for t in runner.targets if mqc.modules[t.name].b == 2]
    err = {b: [] for b in (2, 8)}
    for t in runner.targets:
        if mqc.modules[t.name].b in err:
            w = qbase.base_weights[t.name]
            err[mqc.modules[t.name].b].append(
                float((runner.gptq_weights[t.name] - w).norm() / w.norm())
            )
    assert low and max(err[8]) < min(err[2])  # 8-bit GPTQ is far closer than 2-bit
    info = runner.train_configs[0].extra["baseline"]
    expected = sum(
        t.numel * (mqc.modules[t.name].b + 32 / mqc.modules[t.name].B0) for t in runner.targets
    )
    assert info["storage_avg_bits"] == pytest.approx(
        expected / sum(t.numel for t in runner.targets)
    )


def test_fixed_base_methods_refuse_another_configuration(lm_task):
    runner, _, _ = build("qlora-bnb", lm_task, BNB_NF4)
    other = ModelQConfig.uniform(runner.targets, NF2)
    with pytest.raises(ValueError, match="cannot switch to another"):
        runner.prepare_eval(other)


# --- quantizers and decompositions ------------------------------------------------------------------


def test_our_nf4_is_bitsandbytes_nf4():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(256, 512, generator=g) * 0.02
    weight[0, :5] *= 20  # a few outliers, as in real weights
    # With exact fp32 absmax (no double quantization) our codebook and rounding are bnb's.
    blocks, _ = pad_and_block(weight, BNB_NF4)
    scales = first_level_scales(blocks)
    levels = nf_codebook(4)
    ours_exact = (
        levels[encode_blocks(blocks, scales, levels).long()] * scales.unsqueeze(-1)
    ).reshape(weight.shape)
    assert torch.equal(ours_exact, bnb_nf4_dequantized(weight, double_quant=False))
    # With double quantization the 8-bit absmax codes are formed differently (linear codes of
    # s - min(s) vs bnb's dynamic map of s - mean(s)): close weights, the same error level.
    ours, bnb = qdq(weight, BNB_NF4), bnb_nf4_dequantized(weight, double_quant=True)
    err_ours, err_bnb = (
        (ours - weight).norm() / weight.norm(),
        (bnb - weight).norm() / weight.norm(),
    )
    assert (ours - bnb).norm() / weight.norm() < 0.5 * err_bnb
    assert abs(err_ours - err_bnb) < 0.02 * err_bnb


def _test_matrix():
    g = torch.Generator().manual_seed(0)
    low_rank = torch.randn(96, 4, generator=g) @ torch.randn(4, 128, generator=g)
    return torch.randn(96, 128, generator=g) * 0.02 + 0.01 * low_rank


def test_lq_residual_falls_with_iterations():
    weight, quant = _test_matrix(), lambda x: qdq(x, NF2)

    def residual(iters):
        split = lq_decompose(weight, quant, rank=8, iters=iters)
        q = quant(weight - split.s1 @ split.s2)  # the base the method trains on
        return float((weight - q - split.l1 @ split.l2).norm()), split

    one, _ = residual(1)
    three, _ = residual(3)
    many, split = residual(100)
    assert one > three > many
    assert split.errors[split.kept] == pytest.approx(many) and split.kept < 99  # stopped early
    assert one < float((weight - quant(weight)).norm())  # even one round beats plain quantization


def test_fisher_weighting_lowers_the_weighted_error():
    weight, quant = _test_matrix(), lambda x: qdq(x, NF2)
    g = torch.Generator().manual_seed(1)
    fisher = torch.rand(96, 1, generator=g) ** 4 * torch.rand(1, 128, generator=g) ** 4

    def weighted_error(f):
        split = lq_decompose(weight, quant, rank=8, iters=3, fisher=f)
        return float(
            (
                fisher.sqrt() * (weight - quant(weight - split.s1 @ split.s2) - split.l1 @ split.l2)
            ).norm()
        )

    assert weighted_error(fisher) < 0.9 * weighted_error(None)


def test_loftq_one_round_keeps_the_plain_quantized_base():
    weight, quant = _test_matrix(), lambda x: qdq(x, NF2)
    one = loftq_decompose(weight, quant, rank=8, iters=1)
    assert one.s1 is None  # base = quant(W), QLoRA's base
    assert one.errors[0] < float((weight - quant(weight)).norm())
    three = loftq_decompose(weight, quant, rank=8, iters=3)
    assert three.errors[-1] < three.errors[0]


def test_lowrank_init_makes_the_adapted_weight_q_plus_l1_l2(lm_task):
    runner, _, settings = build("lqlora", lm_task, NF2, {"iters": 2})
    [mqc] = runner.train_configs
    runner.prepare_eval(mqc)
    name = runner.targets[0].name
    wrapper, original = runner.wrappers[name], runner.qbase.base_weights[name]
    s1, s2 = runner.residual_base.sources[name]
    q = qdq(original - s1 @ s2, mqc.modules[name])
    torch.testing.assert_close(wrapper.base_layer.weight, q)
    torch.testing.assert_close(
        wrapper.delta_weight(), s1 @ s2, atol=1e-6, rtol=1e-5
    )  # B = L1, A = L2 / scaling


def test_lqlora_with_fisher_weights_its_decomposition(lm_task):
    plain, _, _ = build("lqlora", lm_task, NF2, {"iters": 2})
    weighted, batches, settings = build(
        "lqlora", lm_task, NF2, {"iters": 2, "fisher_task": "bible-lm"}, steps=3
    )
    weighted.parameters()  # runs the initialisation: Fisher, then the weighted decomposition
    plain.parameters()
    name = plain.targets[0].name
    assert not torch.allclose(weighted.wrappers[name].lora_B, plain.wrappers[name].lora_B)
    assert weighted.train_configs[0].extra["baseline"]["options"]["fisher_task"] == "bible-lm"
    result = train(weighted, batches.batch, settings, progress=False)
    assert np.isfinite(result.losses).all()


@pytest.mark.cuda  # peft's loftq_init hard-codes a CUDA/XPU device
def test_loftq_loop_is_peft_loftq_init():
    from peft.utils.loftq_utils import loftq_init

    weight = _test_matrix()
    split = loftq_decompose(
        weight, lambda x: bnb_nf4_dequantized(x, double_quant=False), rank=8, iters=2
    )
    q, lora_a, lora_b = loftq_init(weight, num_bits=4, reduced_rank=8, num_iter=2)
    torch.testing.assert_close(split.l1 @ split.l2, (lora_b @ lora_a).cpu(), atol=1e-4, rtol=1e-3)
