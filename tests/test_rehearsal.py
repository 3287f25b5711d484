"""The rehearsal of a GPU preset on a CPU (`--config rehearsal=true`, coalora/data/rehearsal.py):
its scale cuts, its stand-ins read through the hub's code paths in the hub's formats, and
config/paper.yaml end to end (the documented command of docs/cluster.md)."""

import csv
import gzip
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from coalora.data import rehearsal
from coalora.offline import HUB_MIRROR_ENV

REPO = Path(__file__).resolve().parents[1]
PAPER = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())


def test_the_scale_cuts_steps_examples_and_lengths_and_keeps_the_grid():
    scaled = rehearsal.scale_config(PAPER)
    scale = rehearsal.SCALE
    assert scaled["results"] == "results-paper-rehearsal"
    assert rehearsal.results_dir("out/my-rehearsal") == "out/my-rehearsal"
    assert scaled["seeds"] == list(scale.seeds)
    for name, exp in scaled["experiments"].items():
        real = PAPER["experiments"][name]
        # The grid as the preset has it ...
        for key in ("model", "task", "methods", "eval_budgets", "unseen_budgets", "variants"):
            assert exp.get(key) == real.get(key), (name, key)
        assert exp.get("quantizer") == real.get("quantizer")
        assert exp.get("eval", {}).get("lm_eval_tasks") == real.get("eval", {}).get("lm_eval_tasks")
        assert exp["train"]["r"] == real["train"]["r"]
        # ... at the rehearsal's scale, on one thread per job.
        assert exp["steps"] == scale.steps and exp["max_train"] == scale.max_train
        assert exp["train"]["batch_size"] == scale.batch_size
        assert exp["train"]["max_length"] == scale.max_length
        assert exp["eval"]["limit"] == scale.eval_limit
        assert "resources" not in exp
        if "window" in real.get("eval", {}):
            assert exp["eval"]["window"] == scale.eval_window
    assert PAPER["experiments"]["roberta-large-qnli"]["steps"] == 16370  # not changed in place


@pytest.fixture(scope="module")
def data_mirror(tmp_path_factory):
    """A mirror of the preset's hub data sets only (no models, no lm-eval data: quick)."""
    out = tmp_path_factory.mktemp("mirror") / "hub"
    return rehearsal.build_mirror(out, [], ["c4", "mnli", "qnli", "qqp", "sst2"], [])


def test_the_stand_ins_have_the_hubs_layout_and_columns(data_mirror):
    glue = data_mirror / "nyu-mll" / "glue"
    assert (glue / "mnli" / "validation_matched-00000-of-00001.parquet").is_file()
    assert (glue / "qqp" / "test-00000-of-00001.parquet").is_file()
    shard = data_mirror / "allenai" / "c4" / "en" / "c4-train.00000-of-01024.json.gz"
    with gzip.open(shard, "rt") as handle:
        first = json.loads(handle.readline())
    assert set(first) == {"text", "timestamp", "url"}
    import datasets

    qqp = datasets.load_dataset(str(glue), "qqp", split="test")
    assert qqp.features["label"].names == ["not_duplicate", "duplicate"]
    assert set(qqp["label"]) == {-1}  # GLUE hides its test labels
    assert json.loads((data_mirror / rehearsal.MARKER_FILE).read_text())["scale"]["steps"] == 2


def test_the_stand_ins_are_the_same_bytes_on_every_build(data_mirror, tmp_path):
    from coalora.evaluate.results import directory_hash

    again = rehearsal.build_mirror(tmp_path / "hub", [], ["c4", "mnli", "qnli", "qqp", "sst2"], [])
    assert directory_hash(again) == directory_hash(data_mirror)


def test_hub_tasks_are_read_from_the_mirror_through_load_dataset(data_mirror, monkeypatch):
    import datasets

    from coalora.data import load_task

    calls = []
    real = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(a) or real(*a, **k))
    monkeypatch.setenv(HUB_MIRROR_ENV, str(data_mirror))
    mnli = load_task("mnli")
    assert mnli.spec.text_fields == ("premise", "hypothesis") and mnli.spec.num_labels == 3
    n_train, n_validation, _ = rehearsal.SCALE.glue_rows
    # test = validation_matched; validation = a slice held out of train.
    assert len(mnli.test) == n_validation and len(mnli.train) + len(mnli.validation) == n_train
    assert {r["label"] for r in mnli.test} == {0, 1, 2}
    assert calls[-1] == (str(data_mirror / "nyu-mll" / "glue"), "mnli")
    assert set(load_task("qnli").test[0]) == {"question", "sentence", "label"}
    assert set(load_task("qqp").train[0]) == {"question1", "question2", "label"}
    c4 = load_task("c4")
    assert c4.spec.kind == "lm" and set(c4.test[0]) == {"text"}
    assert len(c4.test) == rehearsal.SCALE.c4_documents[1]
    # The same repository id without a mirror is the hub's, which is offline here.
    monkeypatch.delenv(HUB_MIRROR_ENV)
    with pytest.raises(OSError, match="needs the Hugging Face hub"):
        load_task("qnli")


def test_a_stand_in_the_rehearsal_lacks_is_named(tmp_path):
    with pytest.raises(ValueError, match="no stand-in for org/unknown-model, mrpc"):
        rehearsal.build_mirror(tmp_path / "hub", ["org/unknown-model"], ["mrpc"], [])
    assert not (tmp_path / "hub").exists()


def snakemake(workdir, *args, check=True):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, cwd=workdir)
    if check:
        assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[1].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\S+)\s+(\d+)$", table, re.M)}


def test_a_rehearsal_runs_every_job_of_the_real_grid_and_one_more(tmp_path):
    args = ["-n", "--configfile", str(REPO / "config" / "paper.yaml")]
    real = job_counts(snakemake(tmp_path, *args).stdout)
    proc = snakemake(tmp_path, *args, "--config", "rehearsal=true")
    rehearsed = job_counts(proc.stdout)
    assert rehearsed.pop("rehearsal_hub") == 1
    rehearsed["total"] += -1
    assert rehearsed == real
    assert "REHEARSAL (not results): results-paper-rehearsal/" in proc.stderr
    # Spelled as Snakemake passes it (a string) or as YAML (a boolean); anything else is refused.
    snakemake(tmp_path, *args, "--config", "rehearsal=True")
    bad = snakemake(tmp_path, *args, "--config", "rehearsal=yes", check=False)
    assert bad.returncode != 0 and "rehearsal" in bad.stdout + bad.stderr


@pytest.mark.slow
def test_the_paper_preset_rehearses_end_to_end(tmp_path):
    """docs/cluster.md's command: every experiment, method, variant, budget and lm-eval task
    of config/paper.yaml runs on stand-ins, and its outputs say it is a rehearsal."""
    started = time.monotonic()
    args = ["--cores", "2", "--configfile", str(REPO / "config" / "paper.yaml")]
    proc = snakemake(tmp_path, *args, "--config", "rehearsal=true", "results=results-paper")
    print(f"rehearsal of config/paper.yaml: {time.monotonic() - started:.0f} s wall")
    assert "REHEARSAL (not results)" in proc.stderr
    assert not (tmp_path / "results-paper").exists()
    check_rehearsal(tmp_path / "results-paper-rehearsal")


def check_rehearsal(results: Path) -> None:
    """What a finished rehearsal of config/paper.yaml holds."""
    from coalora.evaluate.results import read_result

    scaled = rehearsal.scale_config(PAPER)
    records = {p: read_result(p) for p in results.glob("*/*/s0/eval/*.json")}
    for name, exp in scaled["experiments"].items():
        found = {(r["method"], r["config_name"]) for p, r in records.items() if p.parts[-5] == name}
        seen = {f"b{budget_label(b)}" for b in exp["eval_budgets"]}
        unseen = {f"u{budget_label(b)}" for b in exp["unseen_budgets"]}
        for label in ["none", *exp["methods"], *exp.get("variants", {})]:
            got = {cfg for method, cfg in found if method == label}
            shared = label == "none" or label.startswith(("coalora", "shared-lora"))
            assert got == seen | (unseen if shared else set()), (name, label, got)
    for path, record in records.items():
        assert record["protocol"]["rehearsal"] == rehearsal.SCALE.as_dict(), path
        exp = scaled["experiments"][path.parts[-5]]
        assert (record["model"], record["task"]) == (exp["model"], exp["task"]), path
        assert record["quantizer"] == exp.get("quantizer", "nf"), path
        if exp["task"] == "c4":  # every registry task, on the mirror's copy of its data
            tasks = {k.split("/")[1] for k in record["metrics"] if k.startswith("lm_eval/")}
            assert tasks == set(exp["eval"]["lm_eval_tasks"]), path
            assert record["primary_metric"] == "perplexity"
        else:
            primary = "f1" if exp["task"] == "qqp" else "accuracy"
            assert record["primary_metric"] == primary, path
            labels = record["per_example"]["labels"]
            assert len(labels) == rehearsal.SCALE.eval_limit
            assert set(labels) == ({"0", "1", "2"} if exp["task"] == "mnli" else {"0", "1"}), path

    # Tables, claims and figures; the claims say what they are.
    assert (results / "claims.md").read_text().startswith("> **REHEARSAL, NOT RESULTS.**")
    with open(results / "claims.csv") as handle:
        claims = list(csv.DictReader(handle))
    assert claims and all(c["deviations"].startswith("REHEARSAL") for c in claims)
    with open(results / "tables" / "rank.csv") as handle:
        ranks = {(r["method"], r["r"]) for r in csv.DictReader(handle)}
    assert ranks == {(f"{m}{v}", r) for m in ("coalora", "qlora") for v, r in
                     (("-r32", "32"), ("", "64"), ("-r128", "128"))}  # fmt: skip
    with open(results / "tables" / "quantizer.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["hv_int"]]
    assert {r["method"] for r in rows} == {"none", "coalora", "qlora"}  # the INT group
    for name in scaled["experiments"]:
        assert (results / "figures" / f"{name}_pareto.png").stat().st_size > 1000
    assert (results / "figures" / "roberta-large-sst2_search_ablation.png").is_file()


def budget_label(budget):
    return f"{float(budget):.3f}".rstrip("0").rstrip(".")
