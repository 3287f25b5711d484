"""Deployment fold: an exported adapter, loaded by plain peft on a freshly quantized base,
reproduces the configuration-aware forward pass; `coalora export` writes a model directory
that plain transformers + peft (and lm-eval's command) load with the harness's numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file

from baselines import gptq_lora
from coalora.cli import main
from coalora.evaluate.configs import resolve_configs
from coalora.evaluate.lm_eval_tasks import embedded_tasks_dir
from coalora.export import (
    export_peft_adapter,
    fold_into_lora,
    folded_adapter_state,
    load_peft_adapter,
)
from coalora.lora import inject_lora
from coalora.mapper import CoALoRA, ConfigAwareMapper
from coalora.methods import Serves, get_method, registered_methods
from coalora.models import load_model
from coalora.quant import ALL_OPTIONS, ModelQConfig, QuantConfig, QuantizedBase, apply_qconfig
from coalora.runner import load_trained, run_training
from coalora.train import TrainSettings

from tiny_models import tiny_bert, tiny_llama, tiny_llama_classifier, tiny_roberta

FAST_OPTIONS = {"lqlora": {"iters": 2}, "loftq": {"iters": 1}, "gptq-lora": {"calib_samples": 4}}
INPUT_IDS = torch.tensor([[1, 5, 9, 13, 2, 40, 33, 7], [3, 3, 60, 21, 8, 0, 11, 19]])


BUILDERS = {
    "llama": (tiny_llama, "CAUSAL_LM"),
    "bert": (tiny_bert, "SEQ_CLS"),
    "llama-cls": (tiny_llama_classifier, "SEQ_CLS"),
    "roberta": (tiny_roberta, "SEQ_CLS"),  # its head is a module: classifier.dense, .out_proj
}
HEADS = {"llama": None, "bert": ["classifier"], "llama-cls": ["score"], "roberta": ["classifier"]}


def random_config(targets, seed: int) -> ModelQConfig:
    """A non-uniform configuration: an independent random option per matrix."""
    rng = np.random.default_rng(seed)
    options = rng.integers(0, len(ALL_OPTIONS), size=len(targets))
    mqc = ModelQConfig.from_list(targets, [ALL_OPTIONS[i] for i in options])
    assert len(set(mqc.modules.values())) > 1
    return mqc


def trained_like(kind: str, r: int = 4):
    """A CoA-LoRA model whose parts all matter: nonzero B, a rough mapper, s != 1, and (for
    the classifier) a task head moved away from its initial values."""
    build, task = BUILDERS[kind]
    model = build()
    quantized = QuantizedBase(model)
    targets = quantized.targets
    wrappers = inject_lora(model, targets, r=r, alpha=8, seed=0)
    mapper = ConfigAwareMapper.for_targets(targets, r=r, seed=0)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for w in wrappers.values():
            w.lora_B.copy_(torch.randn(w.lora_B.shape, generator=gen) * 0.1)
        mapper.net[-1].weight.normal_(0.0, 0.05, generator=gen)
        mapper.net[-1].bias.normal_(0.0, 0.05, generator=gen)
        mapper.scale.fill_(1.7)
        if HEADS[kind]:
            for p in model.get_submodule(HEADS[kind][0]).parameters():
                p.add_(torch.randn(p.shape, generator=gen))
    return model, quantized, targets, CoALoRA(model, wrappers, mapper, targets), task


def coa_logits(model, quantized, coa, mqc) -> torch.Tensor:
    with torch.no_grad():
        quantized.apply(mqc)
        coa.set_config(mqc)
        return model(input_ids=INPUT_IDS).logits


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_exported_adapter_reproduces_coa_forward(kind, tmp_path):
    model, quantized, targets, coa, task = trained_like(kind)
    mqc = random_config(targets, seed=0)
    expected = coa_logits(model, quantized, coa, mqc)
    out = export_peft_adapter(
        model,
        coa.wrappers,
        coa.mapper,
        mqc,
        targets,
        tmp_path / "adapter",
        "tiny-" + kind,
        task,
        method="coalora",
    )

    # A fresh copy of the base model, quantized under the same configuration by the
    # one-shot path, plus the adapter through peft's own loader: no coalora LoRA code.
    fresh = BUILDERS[kind][0]()
    apply_qconfig(fresh, ModelQConfig.load(out / "qconfig.json", targets))
    loaded = PeftModel.from_pretrained(fresh, str(out)).eval()
    with torch.no_grad():
        got = loaded(input_ids=INPUT_IDS).logits
    assert (got - expected).abs().max().item() <= 1e-5

    # The fold and the head are what make it match: without the mixings the logits differ.
    with torch.no_grad():
        coa.set_plain()
        plain = model(input_ids=INPUT_IDS).logits
    assert (plain - expected).abs().max().item() > 1e-3


# get_peft_model warns that it renames the config's base model path; irrelevant here.
@pytest.mark.filterwarnings("ignore:The PEFT config's `base_model_name_or_path`")
@pytest.mark.parametrize("kind", list(BUILDERS))
def test_adapter_files_are_what_peft_writes(kind, tmp_path):
    model, _, targets, coa, task = trained_like(kind)
    mqc = random_config(targets, seed=1)
    out = export_peft_adapter(
        model,
        coa.wrappers,
        coa.mapper,
        mqc,
        targets,
        tmp_path / "a",
        "tiny-base",
        task,
        method="coalora",
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "coalora_adapter.json",
        "qconfig.json",
    ]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["lora_dropout"] == 0.0
    assert config["task_type"] == task and config["base_model_name_or_path"] == "tiny-base"
    assert sorted(config["target_modules"]) == sorted(coa.wrappers)
    assert config["modules_to_save"] == HEADS[kind]
    # peft's own state-dict naming for the same adapter on the same architecture.
    reference = get_peft_model(BUILDERS[kind][0](), PeftLoraConfig.from_pretrained(str(out)))
    saved = load_file(str(out / "adapter_model.safetensors"))
    assert set(saved) == set(get_peft_model_state_dict(reference))
    assert ModelQConfig.load(out / "qconfig.json", targets).key() == mqc.key()


def test_configurations_fold_to_different_adapters_without_training(tmp_path):
    model, quantized, targets, coa, task = trained_like("llama")
    seen, unseen = random_config(targets, seed=2), random_config(targets, seed=3)
    # Only `seen` is ever run through the model; `unseen` is exported straight away.
    coa_logits(model, quantized, coa, seen)
    snapshot = {k: v.clone() for k, v in coa.state_dict().items()}
    state_seen = folded_adapter_state(model, coa.wrappers, coa.mapper, seen, targets)
    out = export_peft_adapter(
        model,
        coa.wrappers,
        coa.mapper,
        unseen,
        targets,
        tmp_path / "unseen",
        "tiny",
        task,
        method="coalora",
    )
    # Exporting changes nothing that training owns.
    assert all(torch.equal(v, coa.state_dict()[k]) for k, v in snapshot.items())
    state_unseen = load_file(str(out / "adapter_model.safetensors"))
    b_keys = [k for k in state_seen if k.endswith("lora_B.weight")]
    a_keys = [k for k in state_seen if k.endswith("lora_A.weight")]
    assert all(torch.equal(state_seen[k], state_unseen[k]) for k in a_keys)  # A is shared
    assert all((state_seen[k] - state_unseen[k]).abs().max() > 1e-6 for k in b_keys)

    expected = coa_logits(model, quantized, coa, unseen)
    loaded = load_peft_adapter(tiny_llama(), out).eval()
    with torch.no_grad():
        got = loaded(input_ids=INPUT_IDS).logits
    assert (got - expected).abs().max().item() <= 1e-5


def test_fold_into_lora_is_b_times_identity_plus_m():
    gen = torch.Generator().manual_seed(0)
    b, m, a = torch.randn(7, 3, generator=gen), torch.randn(3, 3, generator=gen), torch.randn(3, 5)
    folded = fold_into_lora(b, m)
    assert torch.allclose(folded @ a, b @ (torch.eye(3) + m) @ a, atol=1e-5)
    assert torch.equal(fold_into_lora(b, None), b)
    with pytest.raises(ValueError, match="shape"):
        fold_into_lora(b, torch.zeros(2, 2))


def test_plain_lora_export_and_its_guards(tmp_path):
    model, quantized, targets, coa, task = trained_like("llama")
    mqc = random_config(targets, seed=4)
    with torch.no_grad():
        coa.set_config(mqc)
    # A mixing left on the wrappers would not be in a plain export: refuse.
    with pytest.raises(ValueError, match="has a mixing matrix set"):
        export_peft_adapter(
            model, coa.wrappers, None, mqc, targets, tmp_path / "x", "t", task, method="coalora"
        )
    with pytest.raises(ValueError, match="needs a configuration"):
        export_peft_adapter(
            model,
            coa.wrappers,
            coa.mapper,
            None,
            targets,
            tmp_path / "x",
            "t",
            task,
            method="coalora",
        )
    with pytest.raises(ValueError, match="unknown peft task_type"):
        export_peft_adapter(
            model,
            coa.wrappers,
            coa.mapper,
            mqc,
            targets,
            tmp_path / "x",
            "t",
            "NOPE",
            method="coalora",
        )
    assert not (tmp_path / "x").exists()  # nothing half-written
    # Plain LoRA (a baseline): the export equals the wrappers with no mixing.
    coa.set_plain()
    with torch.no_grad():
        quantized.apply(mqc)
        expected = model(input_ids=INPUT_IDS).logits
    out = export_peft_adapter(
        model, coa.wrappers, None, mqc, targets, tmp_path / "p", "t", task, method="qlora"
    )
    loaded = load_peft_adapter(tiny_llama(), out).eval()
    with torch.no_grad():
        assert (loaded(input_ids=INPUT_IDS).logits - expected).abs().max().item() <= 1e-5
    with pytest.raises(FileNotFoundError, match="not a peft adapter directory"):
        load_peft_adapter(tiny_llama(), tmp_path / "missing")


# ============================================================================ coalora export
# A trained checkpoint, exported by the command, loaded by a process that never imports coalora
# (plain transformers + peft), gives the harness's own logits for that configuration.

EXPORT_SETTINGS = dict(steps=2, lr=1e-2, batch_size=4, max_length=32, r=4, alpha=8)
# The exported model and tokenizer on fixed inputs, in a process without coalora: one entry per
# directory, the logits with the adapter and those of the base alone.
PLAIN_LOAD = """
import json, sys
from pathlib import Path
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

dirs, input_ids, out = json.loads(sys.argv[1]), torch.tensor(json.loads(sys.argv[2])), sys.argv[3]
logits = {}
for key, (directory, kind) in dirs.items():
    auto = AutoModelForSequenceClassification if kind == "classification" else AutoModelForCausalLM
    model = auto.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        logits[key + "/base"] = model(input_ids=input_ids).logits
        if (Path(directory) / "adapter").is_dir():
            model = PeftModel.from_pretrained(model, str(Path(directory) / "adapter")).eval()
        logits[key] = model(input_ids=input_ids).logits
torch.save(logits, out)
assert "coalora" not in sys.modules, "the plain loader imported coalora"
"""


def run_plain(code: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -c code args`` in a fresh interpreter (it imports only what ``code`` does)."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def plain_logits(dirs: dict[str, tuple[Path, str]], tmp_path: Path) -> dict[str, torch.Tensor]:
    out = tmp_path / "plain_logits.pt"
    spec = {key: (str(path), kind) for key, (path, kind) in dirs.items()}
    run_plain(PLAIN_LOAD, json.dumps(spec), json.dumps(INPUT_IDS.tolist()), str(out))
    return torch.load(out)


def harness_logits(checkpoint: Path, export_dir: Path) -> torch.Tensor:
    """The logits the harness computes for the exported configuration (in fp32, the
    compute dtype of this CPU): the trained method rebuilt and activated in memory."""
    method, _ = load_trained(checkpoint)
    method.hold_in(torch.float32)
    qconfig = export_dir / "qconfig.json"
    mqc = ModelQConfig.load(qconfig, method.targets) if qconfig.is_file() else None
    with torch.no_grad():
        return method.prepare_eval(mqc)(input_ids=INPUT_IDS).logits


def train_tiny(tmp_path: Path, method: str, model: str = "tiny-llama", **kw) -> Path:
    task = "bible-testament" if model == "tiny-bert" else "bible-lm"
    return run_training(
        model=model,
        task=task,
        method=method,
        settings=TrainSettings(**EXPORT_SETTINGS),
        out=tmp_path / f"{model}-{method}",
        max_train=16,
        progress=False,
        **kw,
    )


@pytest.fixture(scope="module")
def coalora_checkpoints(tmp_path_factory):
    """CoA-LoRA trained a few steps on tiny-llama (bible-lm) and tiny-bert (bible-testament)."""
    root = tmp_path_factory.mktemp("export-ckpt")
    return {
        model: train_tiny(root, "coalora", model, budgets=[2.5, 3.5])
        for model in ("tiny-llama", "tiny-bert")
    }


def test_export_is_a_transformers_model_and_adapter_equal_to_the_harness(
    coalora_checkpoints, tmp_path, capsys
):
    llama, bert = coalora_checkpoints["tiny-llama"], coalora_checkpoints["tiny-bert"]
    bert_qconfig = tmp_path / "bert.json"
    assert (
        main(["allocate", "--model", "tiny-bert", "--budget", "3.3", "--out", str(bert_qconfig)])
        == 0
    )
    out_llama, out_bert = tmp_path / "llama-b3", tmp_path / "bert-q"
    assert (
        main(["export", "--checkpoint", str(llama), "--budget", "3", "--out", str(out_llama)]) == 0
    )
    assert (
        capsys.readouterr()
        .out.strip()
        .splitlines()[-1]
        .startswith(f"wrote {out_llama}: coalora on tiny-llama under ")
    )
    assert (
        main(["export", "--checkpoint", str(bert), "--qconfig", str(bert_qconfig), "--out", str(out_bert)])
        == 0
    )  # fmt: skip

    # --budget derives the configuration as `coalora evaluate --budget` does for this checkpoint.
    method, manifest = load_trained(llama)
    [expected] = resolve_configs([3.0], method.loaded, method.qbase)
    exported = ModelQConfig.load(out_llama / "qconfig.json", method.targets)
    assert exported.key() == expected.key() and exported.avg_bits <= 3
    assert json.loads((out_llama / "config.json").read_text())["dtype"] == "float32"
    card = (out_llama / "README.md").read_text()
    for fact in ("coalora", "tiny-llama", exported.name, f"{exported.avg_bits:.4f} bits"):
        assert fact in card
    assert f"pretrained={out_llama},peft={out_llama}/adapter,dtype=float32" in card
    assert sorted(p.name for p in (out_llama / "adapter").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "coalora_adapter.json",
        "qconfig.json",
    ]
    # The saved base is the configuration's dequantized weights, not the full-precision ones.
    saved = load_file(str(out_llama / "model.safetensors"))
    fresh = load_model("tiny-llama").model
    name = method.targets[0].name
    full_precision = fresh.get_submodule(name).weight.detach().clone()
    apply_qconfig(fresh, exported)
    assert torch.equal(saved[f"{name}.weight"], fresh.get_submodule(name).weight)
    assert not torch.equal(saved[f"{name}.weight"], full_precision)

    got = plain_logits(
        {"llama": (out_llama, "causal-lm"), "bert": (out_bert, "classification")}, tmp_path
    )
    for key, checkpoint, out in (("llama", llama, out_llama), ("bert", bert, out_bert)):
        expected_logits = harness_logits(checkpoint, out)
        assert (got[key] - expected_logits).abs().max().item() <= 1e-5, key
        # The adapter is what makes them equal: the base alone differs.
        assert (got[f"{key}/base"] - expected_logits).abs().max().item() > 1e-4, key


def test_export_errors_are_one_line_and_write_nothing(coalora_checkpoints, tmp_path, capsys):
    llama = coalora_checkpoints["tiny-llama"]
    bert_qconfig = tmp_path / "bert.json"
    assert (
        main(["allocate", "--model", "tiny-bert", "--budget", "3", "--out", str(bert_qconfig)]) == 0
    )
    out = tmp_path / "out"
    cases = [
        ([], "serves any configurations: give --budget or --qconfig"),
        (["--qconfig", str(bert_qconfig)], "does not fit the model"),
        (["--budget", "1.5"], "budget"),
    ]
    for flags, message in cases:
        capsys.readouterr()
        assert main(["export", "--checkpoint", str(llama), *flags, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("coalora: error: ") and message in err and "\n" not in err, err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bert.json"]  # no DIR, no temp


def own_configuration_flags(method: str, targets, tmp_path: Path) -> tuple[dict, list[str]]:
    """How a tiny run of ``method`` is trained (run_training's configuration arguments) and
    exported (the export's flags), from what the method says it serves."""
    cls = get_method(method)
    if cls.serves in (Serves.ANY_CONFIGURATION, Serves.SHARED_ADAPTER):
        return {"budgets": [2.5, 3.5]}, ["--budget", "3"]
    if cls.fixed_configs(targets) is not None:
        return {}, []  # its own configuration (QLoRA-bnb) or full precision
    qconfig = tmp_path / "nf3.json"
    ModelQConfig.uniform(targets, QuantConfig(3, 8, "fp32", 64, 256), name="nf3").save(qconfig)
    return {"qconfig": str(qconfig)}, ["--qconfig", str(qconfig)]


# QLoRA-bnb's adapter names its base by model name; peft looks for a config file there.
@pytest.mark.filterwarnings("ignore:Could not find a config file")
@pytest.mark.slow
def test_every_method_exports_a_model_plain_transformers_and_peft_reproduce(tmp_path, capsys):
    targets = QuantizedBase(load_model("tiny-llama").model).targets
    checkpoints, exported = {}, {}
    for method in sorted(registered_methods()):
        if method == "gptq-lora" and not gptq_lora.llmcompressor_available():
            continue
        training, flags = own_configuration_flags(method, targets, tmp_path)
        options = FAST_OPTIONS.get(method)
        settings = TrainSettings(
            **EXPORT_SETTINGS, method_options={method: options} if options else {}
        )
        checkpoints[method] = run_training(
            model="tiny-llama", task="bible-lm", method=method, settings=settings,
            out=tmp_path / f"ckpt-{method}", max_train=16, progress=False, **training,
        )  # fmt: skip
        out = tmp_path / f"export-{method}"
        assert (
            main(["export", "--checkpoint", str(checkpoints[method]), *flags, "--out", str(out)])
            == 0
        )
        exported[method] = (out, "causal-lm")
    got = plain_logits(exported, tmp_path)
    for method, (out, _) in exported.items():
        cls = get_method(method)
        assert (out / "adapter").is_dir() == cls.exports_adapter, method
        assert (out / "qconfig.json").is_file() == (cls.serves != Serves.FULL_PRECISION), method
        gap = (got[method] - harness_logits(checkpoints[method], out)).abs().max().item()
        assert gap <= 1e-5, (method, gap)

    # A method of one configuration refuses another; a full-precision one any.
    capsys.readouterr()
    for method, flags, message in [
        ("qlora", ["--budget", "2.5"], "serves only the configuration it trained on"),
        ("full-ft", ["--budget", "3"], "serves full precision only"),
    ]:
        out = tmp_path / f"refused-{method}"
        assert (
            main(["export", "--checkpoint", str(checkpoints[method]), *flags, "--out", str(out)])
            == 2
        )
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and not out.exists(), err


def lm_eval_results(output_path: Path) -> dict:
    [results] = output_path.rglob("results_*.json")
    return json.loads(results.read_text())["results"]


@pytest.mark.slow
def test_lm_eval_command_on_the_export_gives_the_harness_record(coalora_checkpoints, tmp_path):
    llama = coalora_checkpoints["tiny-llama"]
    out, record = tmp_path / "export", tmp_path / "record.json"
    assert main(["export", "--checkpoint", str(llama), "--budget", "3", "--out", str(out)]) == 0
    tasks, limit = ["bible_cloze", "bible_ppl"], "6"
    evaluate = ["evaluate", "--checkpoint", str(llama), "--budget", "3", "--out", str(record)]
    assert main([*evaluate, "--lm-eval-tasks", *tasks, "--limit", limit]) == 0
    harness = json.loads(record.read_text())["metrics"]

    # lm-eval's own command line, as the model card and docs/export.md give it.
    command = [
        sys.executable, "-m", "lm_eval", "--model", "hf",
        "--model_args", f"pretrained={out},peft={out}/adapter,dtype=float32",
        "--include_path", str(embedded_tasks_dir()), "--tasks", ",".join(tasks),
        "--limit", limit, "--output_path", str(tmp_path / "lm_eval"),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = lm_eval_results(tmp_path / "lm_eval")
    assert results["bible_cloze"]["acc,none"] == harness["lm_eval/bible_cloze/acc"]
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert results["bible_ppl"][f"{metric},none"] == pytest.approx(
            harness[f"lm_eval/bible_ppl/{metric}"], rel=1e-6
        ), metric
