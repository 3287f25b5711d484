"""Learning curves: the engine's step log and snapshots, their evaluation, and each record's
exposure (how many optimizer steps trained on its configuration)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from coalora.cli import main
from coalora.evaluate import EvalSettings, Trained, evaluate_configs
from coalora.quant import ModelQConfig
from coalora.runner import TRAIN_LOG_FILE, run_training
from coalora.train import (
    SNAPSHOTS_DIR,
    TrainSettings,
    exposure,
    load_checkpoint,
    snapshot_plan,
)

COMMON = dict(model="tiny-llama", task="bible-lm", max_train=64, progress=False)
SETTINGS = dict(steps=8, lr=1e-2, batch_size=4, max_length=32, r=4, alpha=8, configs_per_step=2)
EVAL = EvalSettings(batch_size=4, limit=4, window=32, lm_eval_tasks=[])


def test_snapshot_plan_rounds_half_up_and_names_by_fraction():
    assert snapshot_plan(8, [0.5, 0.25]) == {"at-0.25": 2, "at-0.5": 4}
    assert snapshot_plan(6, [0.25, 0.5]) == {"at-0.25": 2, "at-0.5": 3}  # 1.5 -> 2
    assert snapshot_plan(12, [0.5, 0.5]) == {"at-0.5": 6}
    assert snapshot_plan(4, [0.1]) == {"at-0.1": 1}  # at least one step
    assert snapshot_plan(8, []) == {}
    with pytest.raises(ValueError, match="last step"):
        snapshot_plan(2, [0.9])  # the checkpoint itself
    with pytest.raises(ValueError, match="two on step 2"):
        snapshot_plan(4, [0.4, 0.5])
    with pytest.raises(ValueError, match="'snapshots'"):
        TrainSettings(snapshots=[1.0])
    with pytest.raises(ValueError, match="'snapshots'.*last step"):
        TrainSettings(steps=2, snapshots=[0.9])


def test_exposure_counts_steps_and_learning_rate_shares():
    log = [
        {"lr": 0.0, "configs": ["a", "b"], "losses": [1, 1]},
        {"lr": 1.0, "configs": ["a", "c"], "losses": [1, 1]},
        {"lr": 0.5, "configs": ["b", "c"], "losses": [1, 1]},
        {"lr": 0.5, "configs": ["a"], "losses": [1]},
    ]
    assert exposure(log, "a", 1.0) == {"steps": 3, "of": 4, "lr_steps": 1.0, "lr_of": 2.0}
    assert exposure(log, "c", 1.0) == {"steps": 2, "of": 4, "lr_steps": 0.75, "lr_of": 2.0}
    assert exposure(log, "z", 1.0)["steps"] == 0


def _coalora(out, **overrides):
    settings = TrainSettings(**{**SETTINGS, "snapshots": [0.25, 0.5], **overrides})
    return run_training(out=out, method="coalora", settings=settings, budgets=[2.5, 3.0, 3.5],
                        **COMMON)  # fmt: skip


def test_snapshots_are_the_run_at_their_step_and_survive_a_resume(tmp_path):
    _coalora(tmp_path / "full")
    names = sorted(p.name for p in (tmp_path / "full" / SNAPSHOTS_DIR).iterdir())
    assert names == ["at-0.25", "at-0.5"]
    snap_manifest, snap_weights = load_checkpoint(tmp_path / "full" / SNAPSHOTS_DIR / "at-0.5")
    assert snap_manifest["steps"] == 4
    assert snap_manifest["snapshot"] == {"step": 4, "of": 8, "fraction": 0.5}
    log = json.loads((tmp_path / "full" / TRAIN_LOG_FILE).read_text())
    assert len(log) == 8 and all(len(e["configs"]) == 2 for e in log)
    assert log[0]["lr"] == 0.0  # the warm-up step runs at a factor of 0
    snap_log = json.loads(
        (tmp_path / "full" / SNAPSHOTS_DIR / "at-0.5" / TRAIN_LOG_FILE).read_text()
    )
    assert snap_log == log[:4]

    # The same run stopped after step 4 holds exactly the snapshot's weights ...
    cut = tmp_path / "cut2"
    settings = TrainSettings(**{**SETTINGS, "snapshots": [0.25, 0.5], "save_every": 3})
    assert run_training(out=cut, method="coalora", settings=settings, budgets=[2.5, 3.0, 3.5],
                        stop_after=4, **COMMON) is None  # fmt: skip
    stopped = load_file(cut.with_name("cut2.resume") / "weights.safetensors")
    for key, value in snap_weights.items():
        assert torch.equal(value, stopped[key]), key
    # ... and, resumed, ends with the uninterrupted run's checkpoint and snapshots.
    run_training(out=cut, method="coalora", settings=settings, budgets=[2.5, 3.0, 3.5],
                 **COMMON)  # fmt: skip
    for name in ["at-0.25", "at-0.5", None]:
        a = tmp_path / "full" if name is None else tmp_path / "full" / SNAPSHOTS_DIR / name
        b = cut if name is None else cut / SNAPSHOTS_DIR / name
        _, wa = load_checkpoint(a)
        _, wb = load_checkpoint(b)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
        assert json.loads((a / TRAIN_LOG_FILE).read_text()) == json.loads(
            (b / TRAIN_LOG_FILE).read_text()
        )


def test_snapshot_records_equal_a_fresh_evaluation_and_name_their_exposure(tmp_path):
    ckpt = _coalora(tmp_path / "ck")
    train_configs = json.loads((ckpt / "train_configs.json").read_text())
    qconfig = tmp_path / "b3.json"
    qconfig.write_text(json.dumps(train_configs[0]))
    records = evaluate_configs(
        Trained(ckpt), [str(qconfig)], out_paths=[tmp_path / "eval" / "b3.json"], settings=EVAL,
        snapshots_out=tmp_path / "curve",
    )  # fmt: skip
    assert [r["train_steps"] for r in records] == [8, 2, 4]
    assert [r["protocol"].get("snapshot") for r in records] == [
        None, {"step": 2, "of": 8, "fraction": 0.25}, {"step": 4, "of": 8, "fraction": 0.5}
    ]  # fmt: skip
    assert (tmp_path / "curve" / "at-0.5" / "b3.json").is_file()
    # Evaluated in place (the base loaded once) = the snapshot loaded as a checkpoint of its own.
    (fresh,) = evaluate_configs(
        Trained(ckpt / SNAPSHOTS_DIR / "at-0.5"), [str(qconfig)], settings=EVAL
    )
    assert fresh["metrics"] == records[2]["metrics"]
    assert fresh["per_example"] == records[2]["per_example"]
    # The command line (what the workflow's evaluate rule runs) writes the same files.
    argv = ["evaluate", "--checkpoint", str(ckpt), "--qconfigs", str(qconfig), "--out-dir",
            str(tmp_path / "cli"), "--snapshots-out", str(tmp_path / "cli-curve"),
            "--batch-size", "4", "--limit", "4", "--window", "32", "--lm-eval-tasks"]  # fmt: skip
    assert main(argv) == 0
    cli_half = json.loads((tmp_path / "cli-curve" / "at-0.5" / "b3.json").read_text())
    assert cli_half["metrics"] == records[2]["metrics"]
    # Exposure: the steps whose drawn configurations include this one, from the run's log.
    log = json.loads((ckpt / TRAIN_LOG_FILE).read_text())
    identity = ModelQConfig.from_dict(train_configs[0], None).identity()
    drawn = [identity in e["configs"] for e in log]
    assert records[0]["exposure"]["steps"] == sum(drawn) and records[0]["exposure"]["of"] == 8
    assert records[2]["exposure"]["steps"] == sum(drawn[:4]) and records[2]["exposure"]["of"] == 4


def test_a_per_configuration_run_trains_every_step_on_its_configuration(tmp_path, capsys):
    argv = ["train", "--model", "tiny-llama", "--task", "bible-lm", "--method", "qlora",
            "--steps", "6", "--budget", "3.0", "--max-train", "64",
            "--set", "batch_size=4", "--set", "max_length=32", "--set", "r=4",
            "--set", "snapshots=[0.5]", "--out", str(tmp_path / "ck"),
            "--evaluate-out", str(tmp_path / "eval" / "b3.json"),
            "--snapshots-out", str(tmp_path / "curve"), "--limit", "4", "--window", "32",
            "--lm-eval-tasks"]  # fmt: skip
    assert main(argv) == 0
    final = json.loads((tmp_path / "eval" / "b3.json").read_text())
    half = json.loads((tmp_path / "curve" / "at-0.5" / "b3.json").read_text())
    assert final["exposure"]["steps"] == final["exposure"]["of"] == 6
    assert half["exposure"]["steps"] == half["exposure"]["of"] == 3
    # lr-weighted: every step is QLoRA's own, so its share is the whole schedule
    assert final["exposure"]["lr_steps"] == final["exposure"]["lr_of"]
    assert "snapshot at step 3" in capsys.readouterr().out


def test_snapshots_out_without_an_evaluation_is_refused(tmp_path, capsys):
    argv = ["train", "--model", "tiny-llama", "--task", "bible-lm", "--method", "qlora",
            "--steps", "2", "--budget", "3.0", "--out", str(tmp_path / "ck"),
            "--snapshots-out", str(tmp_path / "curve")]  # fmt: skip
    assert main(argv) == 2
    assert "--snapshots-out" in capsys.readouterr().err
    assert not (tmp_path / "ck").exists()
