"""``coalora compare A B`` on constructed runs: identical runs, bit-identical records from one
machine, statistically consistent runs from two machines, a flipped verdict, a missing test,
an effect outside the other's interval, and bad input."""

import copy
import hashlib
import json

import pandas as pd
from test_claims import coalora as coalora_records
from test_claims import qlora as qlora_records

from coalora.cli import main
from coalora.evaluate.results import SCHEMA, read_results, write_result
from coalora.report.cli import write_table
from coalora.verdicts import claims, compare

HOLDS, INCONCLUSIVE = claims.HOLDS, claims.INCONCLUSIVE
LABELS = "01" * 20


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def record(method="coalora", config="b3", seed=0, predictions=LABELS, threads=2, **extra):
    correct = sum(p == y for p, y in zip(predictions, LABELS, strict=True)) / len(LABELS)
    return {
        "schema": SCHEMA, "model": "tiny-bert", "task": "bible-testament", "method": method,
        "config_name": config, "seen": True, "avg_bits": 3.0, "budget": 3.0, "quantizer": "nf",
        "metrics": {"accuracy": correct},
        "per_example": {"predictions": predictions, "labels": LABELS},
        "primary_metric": "accuracy", "higher_is_better": True,
        "protocol": {"dtype": "float32", "device": "cpu", "threads": threads},
        "hashes": {"qconfig": sha(config), "base_weights": sha("m"), "checkpoint": sha(method)},
        "seed": seed, "train_seconds": 10.0, "train_steps": 12,
        "setup_seconds": 1.0, "eval_seconds": 2.0,
        "packages": {"torch": "2.13.0", "numpy": "2.1.0"}, "code_version": "abc1234",
        **extra,
    }  # fmt: skip


def claim_row(test="C1.1", effect=0.01, low=-0.02, high=0.04, verdict=INCONCLUSIVE, **extra):
    row = {column: "" for column in claims.CLAIM_COLUMNS}
    row.update(
        claim=test.split(".")[0], test=test, model="tiny-bert", task="bible-testament",
        quantizer="nf", comparison="coalora vs qlora", statistic="hv_diff", unit="HV",
        effect=effect, low=low, high=high, verdict=verdict, noise="3 seeds and test samples",
        n_seeds=3, relation="greater", threshold=0.0,
    )  # fmt: skip
    row.update(extra)
    return row


def make_run(root, tests, records):
    """A results directory: claims.csv and records at the workflow's paths."""
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(tests, columns=claims.CLAIM_COLUMNS).to_csv(root / "claims.csv", index=False)
    for path, rec in records.items():
        write_result(root / path, rec)
    return root


def eval_path(method="coalora", seed=0, config="b3"):
    return f"exp/{method}/s{seed}/eval/{config}.json"


RECORDS = {
    eval_path("coalora", 0): record("coalora", seed=0),
    eval_path("qlora", 0): record("qlora", seed=0, predictions="0" * 40),
}
TESTS = [claim_row("C1.1"), claim_row("C3.1", effect=0.9, low=0.85, high=0.95, verdict=HOLDS)]


def run_cli(capsys, a, b, *extra):
    status = main(["compare", *map(str, (a, b, *extra))])
    out, err = capsys.readouterr()
    return status, out, err


def test_identical_runs_agree_and_every_record_is_bit_identical(tmp_path, capsys):
    a = make_run(tmp_path / "a", TESTS, RECORDS)
    b = make_run(tmp_path / "b", TESTS, RECORDS)
    csv, md = tmp_path / "out" / "compare.csv", tmp_path / "out" / "compare.md"
    status, out, err = run_cli(capsys, a, b, "--out", csv, "--markdown", md)
    assert status == 0 and err == ""
    assert "**The runs agree**" in out and md.read_text() == out
    assert "2 records in both runs: 2 bit-identical" in out
    assert "are the same as recorded" in out
    table = pd.read_csv(csv)
    assert list(table.columns) == compare.COMPARISON_COLUMNS
    assert set(table["status"]) == {compare.AGREES} and len(table) == 2
    assert (table["difference"] == 0).all() and table["verdict_agrees"].all()


def test_same_machine_records_are_bit_identical_though_timings_differ(tmp_path):
    slower = {p: {**r, "eval_seconds": 9.5, "setup_seconds": 3.0} for p, r in RECORDS.items()}
    a = make_run(tmp_path / "a", TESTS, RECORDS)
    b = make_run(tmp_path / "b", TESTS, slower)
    result = compare.compare_runs(a, b)
    assert result.agree
    assert result.records["metrics_identical"].all()
    assert result.records["per_example_identical"].all()
    assert not result.provenance["differs"].any()


def flipped(predictions: str, n: int) -> str:
    return "".join(str(1 - int(p)) if i < n else p for i, p in enumerate(predictions))


def test_consistent_runs_from_two_machines_agree_with_different_bits(tmp_path, capsys):
    other_machine = {
        eval_path("coalora", 0): record("coalora", predictions=flipped(LABELS, 2), threads=4),
        eval_path("qlora", 0): record("qlora", predictions="0" * 40, threads=4),
    }
    shifted = [
        claim_row("C1.1", effect=0.015, low=-0.015, high=0.045),
        claim_row("C3.1", effect=0.91, low=0.86, high=0.97, verdict=HOLDS),
    ]
    a = make_run(tmp_path / "a", TESTS, RECORDS)
    b = make_run(tmp_path / "b", shifted, other_machine)
    status, out, _ = run_cli(capsys, a, b)
    assert status == 0 and "**The runs agree**" in out
    assert "2 records in both runs: 1 bit-identical" in out
    assert "2 of 40 predictions differ" in out and "accuracy 1.0 vs 0.95" in out
    assert "different thread counts: 2 in A, 4 in B; no machine block in A and B" in out
    assert "(1 of 1 differing records)" in out
    assert "| threads | 2 | 4 |" in out


def test_a_flipped_verdict_fails_and_is_named(tmp_path, capsys):
    flip = [TESTS[0], claim_row("C3.1", effect=0.93, low=0.88, high=1.01, verdict=INCONCLUSIVE)]
    a = make_run(tmp_path / "a", TESTS, RECORDS)
    b = make_run(tmp_path / "b", flip, RECORDS)
    csv = tmp_path / "compare.csv"
    status, out, err = run_cli(capsys, a, b, "--out", csv)
    assert status == 1
    assert err == (
        "coalora compare: disagree: C3.1 tiny-bert/bible-testament/nf coalora vs qlora: "
        "verdict changed (holds -> inconclusive at this scale)\n"
    )
    assert "**The runs disagree** on 1 of 2 tests" in out
    row = pd.read_csv(csv).set_index("test").loc["C3.1"]
    assert not row["verdict_agrees"] and row["a_inside_b"] and row["b_inside_a"]


def test_an_effect_outside_the_other_interval_fails(tmp_path, capsys):
    drifted = [claim_row("C1.1", effect=0.05, low=0.03, high=0.07), TESTS[1]]
    a = make_run(tmp_path / "a", TESTS, RECORDS)
    b = make_run(tmp_path / "b", drifted, RECORDS)
    status, _, err = run_cli(capsys, a, b)
    assert status == 1
    assert "C1.1" in err and "A's effect outside B's interval" in err
    assert "B's effect outside A's interval" in err


def test_a_missing_test_fails_and_is_named(tmp_path, capsys):
    a = make_run(tmp_path / "a", TESTS, RECORDS)
    b = make_run(tmp_path / "b", TESTS[:1], {eval_path("coalora", 0): RECORDS[eval_path()]})
    # claims.csv files as the arguments: the records are those beside them
    status, out, err = run_cli(capsys, a / "claims.csv", b / "claims.csv")
    assert status == 1 and "C3.1" in err and "only in A" in err
    assert "Only in A (1): `exp/qlora/s0/eval/b3.json`" in out


def test_without_an_interval_an_effect_is_inside_only_if_equal():
    one = pd.DataFrame([claim_row(low=float("nan"), high=float("nan"))])[compare.CLAIM_FIELDS]
    same = compare.compare_tests(one, one)
    assert same["status"].tolist() == [compare.AGREES]
    other = one.assign(effect=0.02)
    judged = compare.compare_tests(one, other)
    assert not judged["a_inside_b"].iloc[0]
    # No interval, no noise estimate: only the verdict can disagree.
    assert judged["status"].tolist() == [compare.UNJUDGED]
    assert compare.failing(judged).empty
    flipped = compare.compare_tests(one, other.assign(verdict=HOLDS))
    assert len(compare.failing(flipped)) == 1


def test_checkpoint_manifests_are_not_records(tmp_path):
    # The workflow's layout: shared methods' checkpoints at s<seed>/checkpoint/, per-
    # configuration runs' at s<seed>/<cfg>/checkpoint/; every record under s<seed>/eval/.
    runs = []
    for name in ("a", "b"):
        run = make_run(tmp_path / name, TESTS, RECORDS)
        for folder in ("exp/coalora/s0/checkpoint", "exp/qlora/s1/b3/checkpoint"):
            (run / folder).mkdir(parents=True)
            (run / folder / "manifest.json").write_text('{"method": "x"}')
        runs.append(run)
    records = compare.compare_runs(*runs).records
    assert sorted(records["record"]) == sorted(RECORDS)


def test_window_nll_differences_are_counted():
    x = {"window_nll": [1.0, 2.0, 3.0]}
    assert compare.per_example_difference(x, copy.deepcopy(x)) == ""
    y = {"window_nll": [1.0, 2.0 + 1e-9, 3.0]}
    assert compare.per_example_difference(x, y) == "1 of 3 window NLLs differ (max |diff| 1e-09)"


MACHINE = {
    "cpu": "AMD EPYC 9454 48-Core Processor", "arch": "x86_64",
    "isa": ["avx2", "avx512_bf16", "avx512f"], "kernel_env": {},
    "torch_threads": 2, "blas": "mkl", "gpu": None, "cuda": None,
}  # fmt: skip


def test_the_machine_block_explains_different_bits():
    # provenance() reads plain records: the machine block (notes/machine.md) or its absence
    a = compare.provenance({**record(), "machine": MACHINE})
    b = compare.provenance(
        {**record(), "machine": {**MACHINE, "cpu": "Intel Xeon", "isa": ["avx2", "avx512f"]}}
    )
    why = compare.explanation(a, b)
    assert "different CPU instruction sets: avx512_bf16 only in A" in why
    assert "different CPUs: AMD EPYC 9454 48-Core Processor in A, Intel Xeon in B" in why
    newer_torch = {**record(), "machine": MACHINE, "packages": {"torch": "2.14.0"}}
    why = compare.explanation(a, compare.provenance(newer_torch))
    assert why == "different package versions: torch 2.13.0 in A, 2.14.0 in B; numpy only in A"
    assert compare.explanation(a, a) == "nothing in the recorded provenance explains it"
    old = compare.provenance(record())  # a record older than the machine block
    assert compare.explanation(a, old) == (
        "nothing recorded explains it (no machine block in B: the CPUs may differ)"
    )
    assert compare.explanation(old, {**old, "threads": 4}) == (
        "different thread counts: 2 in A, 4 in B; no machine block in A and B: the CPUs may differ"
    )


def test_identical_provenance_with_different_bits_is_unexplained(tmp_path):
    noisy = {**RECORDS, eval_path(): record(predictions=flipped(LABELS, 1))}
    a = make_run(tmp_path / "a", TESTS, RECORDS)
    b = make_run(tmp_path / "b", TESTS, noisy)
    records = compare.compare_runs(a, b).records.set_index("record")
    assert records.loc[eval_path(), "why"].startswith("nothing recorded explains it")


def test_claims_of_two_consistent_runs_built_by_the_claims_code_agree(tmp_path, capsys):
    """Two runs whose records differ by a few predictions (as across machines): the real
    claims tables of both, compared, agree though their records differ bit-wise."""
    runs = {}
    for name, flips in (("a", 0), ("b", 3)):
        root = tmp_path / name
        records = qlora_records(lambda bits: 0.7) + coalora_records(lambda bits: 0.7)
        for rec in records:
            per = rec["per_example"]
            per["predictions"] = flipped(per["predictions"], flips)
            hits = [p == y for p, y in zip(per["predictions"], per["labels"], strict=True)]
            rec["metrics"]["accuracy"] = sum(hits) / len(hits)
            rec["protocol"]["threads"] = 2 if name == "a" else 8
            path = root / eval_path(rec["method"], rec["seed"], rec["config_name"])
            write_result(path, rec)
        paths = sorted(root.glob(compare.RECORD_GLOB))
        write_table(claims.claims_table(read_results(paths), replicates=200), root / "claims.csv")
        runs[name] = root
    status, out, _ = run_cli(capsys, runs["a"], runs["b"])
    assert status == 0, out
    assert "**The runs agree**" in out and "different thread counts: 2 in A, 8 in B" in out


def bad_inputs(tmp_path):
    good = make_run(tmp_path / "good", TESTS, RECORDS)
    no_claims = tmp_path / "no-claims"
    no_claims.mkdir()
    garbage = make_run(tmp_path / "garbage", TESTS, {})
    (garbage / "claims.csv").write_bytes(b'"unterminated\n\x00\xff')
    short = make_run(tmp_path / "short", TESTS, {})
    pd.DataFrame(TESTS).drop(columns=["verdict"]).to_csv(short / "claims.csv", index=False)
    wordy = make_run(tmp_path / "wordy", [claim_row(effect="large")], {})
    twice = make_run(tmp_path / "twice", [TESTS[0], TESTS[0]], {})
    broken = make_run(tmp_path / "broken", TESTS, RECORDS)
    (broken / eval_path()).write_text(json.dumps({**RECORDS[eval_path()], "seed": "zero"}))
    return good, {
        "missing directory": (tmp_path / "nowhere", "neither a results directory"),
        "no claims.csv": (no_claims, "no claims.csv in"),
        "unreadable claims.csv": (garbage, "is not a readable claims table"),
        "missing column": (short, "missing column(s) verdict"),
        "not a number": (wordy, "column 'effect' has a value that is not a number"),
        "a test twice": (twice, "test C1.1 / tiny-bert / bible-testament / nf / coalora vs qlora"),
        "corrupt record": (broken, "field 'seed' must be an integer"),
    }


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    good, cases = bad_inputs(tmp_path)
    for name, (bad, message) in cases.items():
        out_dir = tmp_path / "out"
        status, out, err = run_cli(
            capsys, good, bad, "--out", out_dir / "c.csv", "--markdown", out_dir / "c.md"
        )
        assert status == 2, name
        assert out == "" and err.startswith("coalora: error: ") and err.count("\n") == 1, name
        assert message in err, (name, err)
        assert not out_dir.exists(), name


def test_the_columns_read_are_columns_the_claims_table_writes():
    assert set(compare.CLAIM_FIELDS) <= set(claims.CLAIM_COLUMNS)


def _flipped(predictions: str, n: int) -> str:
    """``predictions`` with its first ``n`` correct answers made wrong."""
    out, left = list(predictions), n
    for i, (p, y) in enumerate(zip(predictions, LABELS, strict=True)):
        if left and p == y:
            out[i], left = "1" if y == "0" else "0", left - 1
    return "".join(out)


def test_metric_gaps_per_method_have_intervals_and_a_bound(tmp_path, capsys):
    """B computes in another dtype: CoA-LoRA loses 8 of 40 answers in every record (-20
    points), QLoRA is unchanged (0, inside the +-1 point bound)."""
    base = "01" * 18 + "1010"  # 36 of 40 right
    a, b = {}, {}
    for seed in range(3):
        for config in ("b3", "b4"):
            for method in ("coalora", "qlora"):
                path = eval_path(method, seed, config)
                a[path] = record(method, config, seed, predictions=base)
                changed = _flipped(base, 8) if method == "coalora" else base
                b[path] = record(
                    method, config, seed, predictions=changed,
                    protocol={"dtype": "bfloat16", "device": "cpu", "threads": 2},
                )  # fmt: skip
    run_a, run_b = make_run(tmp_path / "a", TESTS, a), make_run(tmp_path / "b", TESTS, b)
    gaps_csv = tmp_path / "gaps.csv"
    status, out, _ = run_cli(capsys, run_a, run_b, "--gaps", gaps_csv)
    assert status == 0  # gaps are reported, they do not make the runs disagree
    gaps = pd.read_csv(gaps_csv).set_index("method")
    assert gaps.loc["coalora", "effect"] == -20.0 and gaps.loc["qlora", "effect"] == 0.0
    assert gaps.loc["coalora", "n_seeds"] == 3 and gaps.loc["coalora", "n_configs"] == 2
    # Every seed moved alike, so the interval is the test-sample part: it excludes 0 and the
    # bound; QLoRA's records are identical, so its interval is the point 0.
    assert gaps.loc["coalora", "high"] < -1.0 and not gaps.loc["coalora", "within_bound"]
    assert gaps.loc["qlora", "low"] == 0.0 == gaps.loc["qlora", "high"]
    assert gaps.loc["qlora", "within_bound"]
    assert gaps.loc["coalora", "dtype_a"] == "float32"
    assert gaps.loc["coalora", "dtype_b"] == "bfloat16"
    assert "## Metric gaps (B - A) per method" in out and "float32 -> bfloat16" in out
