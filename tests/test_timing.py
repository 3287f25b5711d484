"""The set-up benchmark's timing marks (coalora.timing): silent without the variable, one
JSON line per mark with it, and in a CLI run the marks come in the order of a job."""

import json

import pytest

from coalora import timing
from coalora.cli import main


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(timing, "_seen", set())  # `once` marks of earlier tests


def test_no_variable_no_file(tmp_path, monkeypatch, fresh):
    monkeypatch.delenv(timing.TIMING_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    timing.mark("cli_start")
    timing.mark("first_step", once=True)
    assert list(tmp_path.iterdir()) == []


def test_marks_are_json_lines(tmp_path, monkeypatch, fresh):
    path = tmp_path / "t.jsonl"
    monkeypatch.setenv(timing.TIMING_ENV, str(path))
    timing.mark("a")
    timing.mark("b", once=True)
    timing.mark("b", once=True)  # only the first
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [m["event"] for m in lines] == ["a", "b"]
    assert all(isinstance(m["t"], float) and isinstance(m["pid"], int) for m in lines)
    assert lines[0]["t"] <= lines[1]["t"]
    assert timing.read_marks(path) == lines


def test_a_train_run_marks_its_first_step_after_the_model_is_loaded(tmp_path, monkeypatch, fresh):
    path = tmp_path / "t.jsonl"
    monkeypatch.setenv(timing.TIMING_ENV, str(path))
    args = ["train", "--model", "tiny-llama", "--task", "bible-lm", "--method", "full-ft"]
    args += ["--steps", "1", "--max-train", "16", "--set", "batch_size=2"]
    args += ["--set", "max_length=16", "--out", str(tmp_path / "ckpt")]
    assert main(args) == 0
    events = [m["event"] for m in timing.read_marks(path)]
    assert events[0] == "cli_start" and events[-1] == "cli_end"
    assert events.count("first_step") == 1
    assert events.index("model_load_start") < events.index("model_loaded")
    assert events.index("model_loaded") < events.index("first_step")
