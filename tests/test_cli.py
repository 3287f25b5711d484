"""The `coalora` command end to end on tiny models: allocate, train (with search), adapt."""

import argparse
import json

import pytest
import torch
from peft import PeftModel

from coalora.cli import build_parser, main
from coalora.models import load_model
from coalora.quant import ModelQConfig, apply_qconfig, quantizable_targets
from coalora.runner import load_trained

TRAIN = [
    "--model", "tiny-llama", "--task", "bible-lm", "--max-train", "64",
    "--set", "batch_size=4", "--set", "max_length=32", "--set", "r=8", "--set", "lr=0.01",
]  # fmt: skip


@pytest.fixture(scope="module")
def coa_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("coa") / "ckpt"
    args = ["train", *TRAIN, "--method", "coalora", "--steps", "12", "--out", str(out)]
    args += ["--budgets", "2.5,3,3.5,4", "--set", "epoch_steps=4", "--set", "search_candidates=3"]
    assert main(args) == 0
    return out


def command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """``path`` and, under it, every sub-command and sub-sub-command of ``parser``."""
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from command_paths(sub, (*path, name))


COMMAND_PATHS = list(command_paths(build_parser()))


def test_the_command_tree_is_walked():
    assert {("report",), ("report", "claims"), ("train",)} <= set(COMMAND_PATHS)


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda path: " ".join(path) or "coalora")
def test_every_help_prints_and_exits_0(path, capsys):
    # argparse formats help strings with %: a bare "%" in one crashes that --help.
    with pytest.raises(SystemExit) as stop:
        main([*path, "--help"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {' '.join(('coalora', *path))} ")


def test_allocate_writes_a_configuration_within_budget(tmp_path):
    out = tmp_path / "q.json"
    assert main(["allocate", "--model", "tiny-llama", "--budget", "3.1", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["avg_bits"] <= 3.1 and data["budget"] == 3.1
    targets = quantizable_targets(load_model("tiny-llama").model)
    assert ModelQConfig.load(out, targets).avg_bits == data["avg_bits"]


@pytest.mark.parametrize("budget", ["1.5", "9", "nan"])
def test_impossible_budget_is_one_line_and_writes_nothing(tmp_path, capsys, budget):
    out = tmp_path / "q.json"
    assert main(["allocate", "--model", "tiny-llama", "--budget", budget, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("coalora: error: budget") and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "q.json"
    assert main(["allocate", "--model", "./no/such/model", "--budget", "3", "--out", str(out)]) == 2
    assert "model directory not found" in capsys.readouterr().err
    assert not out.exists()


def test_training_with_search_grows_the_training_set(coa_checkpoint):
    manifest = json.loads((coa_checkpoint / "manifest.json").read_text())
    log = json.loads((coa_checkpoint / "search_log.json").read_text())
    assert manifest["steps"] == 12 and manifest["train_seconds"] > 0
    assert manifest["loss_first_last"][1] < manifest["loss_first_last"][0]
    assert len(log) == 2  # rounds after steps 4 and 8
    for round_log in log:
        assert len(round_log["candidates"]) == 3
        assert round_log["hv_after"] >= round_log["hv_before"]
    assert manifest["num_train_configs"] > 0
    assert not (coa_checkpoint.parent / "ckpt.resume").exists()


def test_adapt_exports_an_adapter_equal_to_the_coa_forward(coa_checkpoint, tmp_path):
    out = tmp_path / "adapter"
    assert (
        main(["adapt", "--checkpoint", str(coa_checkpoint), "--budget", "2.75", "--out", str(out)])
        == 0
    )
    mqc_data = json.loads((out / "qconfig.json").read_text())
    assert mqc_data["avg_bits"] <= 2.75
    method, _ = load_trained(coa_checkpoint)
    mqc = ModelQConfig.from_dict(mqc_data, method.targets)
    x = torch.randint(0, 1000, (2, 16))
    with torch.no_grad():
        expected = method.prepare_eval(mqc)(input_ids=x).logits
        base = apply_qconfig(load_model("tiny-llama").model, mqc)
        got = PeftModel.from_pretrained(base, out)(input_ids=x).logits
    assert (got - expected).abs().max() <= 1e-5


def test_adapt_rejects_a_configuration_of_another_model(coa_checkpoint, tmp_path, capsys):
    qconfig = tmp_path / "bert.json"
    assert main(["allocate", "--model", "tiny-bert", "--budget", "3", "--out", str(qconfig)]) == 0
    out = tmp_path / "adapter"
    code = main(
        ["adapt", "--checkpoint", str(coa_checkpoint), "--qconfig", str(qconfig), "--out", str(out)]
    )
    assert code == 2 and "does not fit the model" in capsys.readouterr().err
    assert not out.exists()


def test_corrupt_checkpoint_is_one_line(coa_checkpoint, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("manifest.json", "train_configs.json"):
        (broken / name).write_bytes((coa_checkpoint / name).read_bytes())
    (broken / "weights.safetensors").write_bytes(b"\x00" * 64)
    code = main(
        ["adapt", "--checkpoint", str(broken), "--budget", "3", "--out", str(tmp_path / "a")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "unreadable" in err and "\n" not in err
    assert not (tmp_path / "a").exists()


def test_per_configuration_method_needs_a_configuration(tmp_path, capsys):
    code = main(
        ["train", *TRAIN, "--method", "qlora", "--steps", "2", "--out", str(tmp_path / "c")]
    )
    assert code == 2 and "give --budget or --qconfig" in capsys.readouterr().err


def test_qlora_trains_per_budget(tmp_path):
    out = tmp_path / "q"
    assert (
        main(
            [
                "train",
                *TRAIN,
                "--method",
                "qlora",
                "--steps",
                "6",
                "--budget",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_train_configs"] == 1 and manifest["train_avg_bits"][0] <= 3
    method, _ = load_trained(out)
    assert method.mapper is None
