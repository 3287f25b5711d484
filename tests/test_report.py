"""Tables and figures of ``coalora.report`` on synthetic evaluation results (hand-computed)."""

import hashlib
import math

import pandas as pd
import pytest

from coalora import report
from coalora.cli import main
from coalora.evaluate.results import SCHEMA, read_results, write_result

# The HV normalisation box for [0, 1] metrics: (MIN_BITS, 0) to (MAX_BITS, 1).
BOX = 8.625 - 2.0322265625


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def record(method, config, bits, value, *, seen=None, quantizer="nf", trained=None, r=64,
           mode="full", model="tiny-roberta", task="sst2", seconds=None, steps=None, ckpt=None,
           metrics=None):  # fmt: skip
    """A valid results record; ``trained`` (the registry method) adds train_settings."""
    higher = task != "bible-lm"
    metric = "accuracy" if higher else "perplexity"
    protocol = {}
    if trained:
        settings = {"r": r, "search_mode": mode, "steps": steps, "seed": 0}
        protocol = {"trained_method": trained, "train_settings": settings}
    return {
        "schema": SCHEMA,
        "model": model,
        "task": task,
        "method": method,
        "config_name": config,
        "seen": seen,
        "avg_bits": bits,
        "budget": None,
        "quantizer": quantizer,
        "metrics": {metric: value, **(metrics or {})},
        "per_example": None,
        "primary_metric": metric,
        "higher_is_better": higher,
        "protocol": protocol,
        "hashes": {
            "qconfig": sha(f"{quantizer}{config}"),
            "base_weights": sha(model),
            "checkpoint": sha(ckpt or f"{model}{task}{quantizer}{method}") if trained else None,
        },
        "seed": 0,
        "train_seconds": seconds,
        "train_steps": steps,
        "setup_seconds": 0.0,
        "eval_seconds": 0.0,
        "packages": {},
        "code_version": "test",
    }


def coalora(label, values, seen, *, mode="full", r=64, quantizer="nf"):
    """A shared CoA-LoRA checkpoint (30 s, 20 steps) evaluated on b3, b4 and u2.75."""
    configs = [("b3", 3.0), ("b4", 4.0), ("u2.75", 2.75)]
    return [
        record(
            label,
            c,
            bits,
            v,
            seen=s,
            quantizer=quantizer,
            trained="coalora",
            r=r,
            mode=mode,
            seconds=30.0,
            steps=20,
        )  # fmt: skip
        for (c, bits), v, s in zip(configs, values, seen, strict=True)
    ]


def qlora(values, quantizer="nf"):
    """Per-configuration QLoRA: one checkpoint (10 s, 5 steps) per configuration b3, b4."""
    return [
        record(
            "qlora",
            c,
            bits,
            v,
            seen=True,
            quantizer=quantizer,
            trained="qlora",
            seconds=10.0,
            steps=5,
            ckpt=f"qlora{quantizer}{c}",
        )  # fmt: skip
        for (c, bits), v in zip([("b3", 3.0), ("b4", 4.0)], values, strict=True)
    ]


def lm(method, config, bits, ppl, seen=None, trained=None):
    return record(method, config, bits, ppl, seen=seen, trained=trained, model="tiny-llama",
                  task="bible-lm", seconds=60.0 if trained else None, steps=8 if trained else None,
                  metrics={"bible_mc/acc": 0.25})  # fmt: skip


RECORDS = [
    # tiny-roberta / sst2 under NF: the base, QLoRA, CoA-LoRA at r 64 and 32, a frozen search.
    record("none", "b3", 3.0, 0.50),
    record("none", "u2.75", 2.75, 0.48),
    record("none", "full-precision", 32.0, 0.90, quantizer="none"),
    *qlora([0.70, 0.80]),
    *coalora("coalora", [0.72, 0.84, 0.66], [True, False, False]),
    *coalora("coalora-r32", [0.71, 0.81, 0.60], [True, True, False], r=32),
    *coalora("coalora-frozen", [0.70, 0.78, 0.62], [True, True, False], mode="frozen"),
    # the same under INT
    *qlora([0.60, 0.75], quantizer="int"),
    *coalora("coalora", [0.65, 0.77, 0.58], [True, False, False], quantizer="int"),
    # a causal LM, lower-is-better perplexity
    lm("none", "b3", 3.0, 40.0),
    lm("qlora", "b3", 3.0, 22.0, seen=True, trained="qlora"),
    lm("coalora", "b3", 3.0, 20.0, seen=True, trained="coalora"),
    lm("coalora", "u2.75", 2.75, 25.0, seen=False, trained="coalora"),
]
# Hand-computed HVs: the staircase of (bits, 1 - accuracy) points under (8.625, 1).
HV_COALORA_NF = (5.875 * 0.66 + 5.625 * 0.06 + 4.625 * 0.12) / BOX
HV_COALORA_R32 = (5.875 * 0.60 + 5.625 * 0.11 + 4.625 * 0.10) / BOX
HV_QLORA_NF = (5.625 * 0.70 + 4.625 * 0.10) / BOX
HV_COALORA_INT = (5.875 * 0.58 + 5.625 * 0.07 + 4.625 * 0.12) / BOX


def write(tmp_path, records, name="r"):
    paths = []
    for i, rec in enumerate(records):
        paths.append(tmp_path / f"{name}{i:02d}.json")
        write_result(paths[-1], rec)
    return paths


@pytest.fixture
def paths(tmp_path):
    return write(tmp_path / "results", RECORDS)


@pytest.fixture
def results(paths):
    return read_results(paths)


def rows_by(table, **match):
    mask = pd.Series(True, index=table.index)
    for key, value in match.items():
        mask &= table[key] == value
    return table[mask]


def one(table, **match):
    found = rows_by(table, **match)
    assert len(found) == 1, found
    return found.iloc[0]


def test_table1_groups_by_model_task_quantizer_with_full_precision_in_each(results):
    assert (report.MIN_BITS, report.MAX_BITS) == (2.0322265625, 8.625)
    table = report.summary_table(results)
    assert list(table.columns[:4]) == ["model", "task", "quantizer", "method"]
    groups = sorted(set(zip(table["model"], table["task"], table["quantizer"], strict=True)))
    assert groups == [
        ("tiny-llama", "bible-lm", "nf"),
        ("tiny-roberta", "sst2", "int"),
        ("tiny-roberta", "sst2", "nf"),
    ]  # the full-precision row forms no group of its own
    # The full-precision row joins both quantizers' groups, as its own method.
    for quantizer in ("nf", "int"):
        full = one(table, task="sst2", quantizer=quantizer, method="full-precision")
        assert (full["n_configs"], full["mean_metric"], full["solutions"]) == (1, 0.90, "n/a")
        assert math.isnan(full["hv"])  # 32 bits: outside the configuration space, no HV
    base = one(table, task="sst2", quantizer="nf", method="none")
    assert (base["n_configs"], base["mean_metric"]) == (2, pytest.approx(0.49))
    assert base["acc_gap"] == pytest.approx(-20.0)  # 0.50 - 0.70 at b3
    assert rows_by(table, quantizer="int", method="none").empty
    nf = one(table, task="sst2", quantizer="nf", method="coalora")
    assert nf["hv"] == pytest.approx(HV_COALORA_NF)
    assert nf["acc_gap"] == pytest.approx(3.0)  # (0.02 + 0.04) / 2 points
    assert nf["solutions"] == "any"
    assert one(table, quantizer="int", method="coalora")["hv"] == pytest.approx(HV_COALORA_INT)
    assert one(table, quantizer="int", method="coalora")["acc_gap"] == pytest.approx(3.5)
    q = one(table, task="sst2", quantizer="nf", method="qlora")
    assert q["hv"] == pytest.approx(HV_QLORA_NF) and math.isnan(q["acc_gap"])
    assert (q["train_seconds"], q["train_steps"], q["solutions"]) == (20.0, 10, "2")
    # A variant label keeps its trained method's solutions.
    assert one(table, task="sst2", quantizer="nf", method="coalora-r32")["solutions"] == "any"
    # Perplexity, in log space: points (2.75, ln 25), (3, ln 20); box height ln(1.1 * the
    # group's worst (40)) = ln 44.
    ppl = one(table, task="bible-lm", method="coalora")
    ln = math.log
    area = 5.875 * (ln(44) - ln(25)) + 5.625 * (ln(25) - ln(20))
    assert ppl["hv"] == pytest.approx(area / (BOX * ln(44)))
    assert ppl["acc_gap"] == pytest.approx(100 * (ln(22) - ln(20)))  # QLoRA 22 vs 20 at b3


def test_rank_table_rows_and_hv_as_in_table1(results):
    table = report.rank_table(results)
    assert list(table.columns) == report.RANK_COLUMNS
    # Only CoA-LoRA under NF was evaluated at two ranks (64 and 32); the frozen-search variant
    # differs in its search, not its rank, and stays out.
    assert list(zip(table["method"], table["r"], strict=True)) == [
        ("coalora-r32", 32),
        ("coalora", 64),
    ]  # by rank
    assert set(table["trained_method"]) == {"coalora"} and set(table["quantizer"]) == {"nf"}
    r32 = one(table, method="coalora-r32")
    assert r32["hv"] == pytest.approx(HV_COALORA_R32)
    assert r32["acc_gap"] == pytest.approx(1.0)  # (0.01 + 0.01) / 2
    assert (r32["train_seconds"], r32["n_configs"]) == (30.0, 3)
    table1 = report.summary_table(results)
    for row in table.itertuples():
        same = one(table1, model=row.model, task=row.task, quantizer="nf", method=row.method)
        assert row.hv == same["hv"] and row.mean_metric == same["mean_metric"]


def test_search_table(results):
    table = report.search_table(results)
    assert list(table.columns) == report.SEARCH_COLUMNS
    assert list(zip(table["method"], table["search_mode"], strict=True)) == [
        ("coalora", "full"),
        ("coalora-frozen", "frozen"),
    ]  # the rank variant stays out; INT and the LM have one search mode only
    full = one(table, method="coalora")
    assert full["mean_metric_unseen"] == pytest.approx((0.84 + 0.66) / 2)  # b4 unseen, u2.75
    assert full["mean_metric"] == pytest.approx(0.74)
    frozen = one(table, method="coalora-frozen")
    assert frozen["mean_metric_unseen"] == pytest.approx(0.62)
    assert frozen["hv"] == pytest.approx((5.875 * 0.62 + 5.625 * 0.08 + 4.625 * 0.08) / BOX)


def test_quantizer_table(results):
    table = report.quantizer_table(results)
    assert list(table.columns) == report.QUANTIZER_COLUMNS
    assert set(table["task"]) == {"sst2"}  # the LM has NF only
    assert sorted(table["method"]) == [
        *["coalora", "coalora-frozen", "coalora-r32", "full-precision", "none", "qlora"]
    ]
    c = one(table, method="coalora")
    assert (c["hv_nf"], c["hv_int"]) == (
        pytest.approx(HV_COALORA_NF),
        pytest.approx(HV_COALORA_INT),
    )
    assert (c["acc_gap_nf"], c["acc_gap_int"]) == (pytest.approx(3.0), pytest.approx(3.5))
    assert c["mean_metric_int"] == pytest.approx((0.65 + 0.77 + 0.58) / 3)
    frozen = one(table, method="coalora-frozen")
    assert math.isnan(frozen["hv_int"]) and frozen["hv_nf"] > 0


def test_seen_unseen_numbers(results):
    table = report.seen_unseen_table(results)
    assert list(table.columns) == report.SEEN_UNSEEN_COLUMNS
    got = {
        (r.quantizer, r.task, r.method): (r.n_seen, r.n_unseen, r.mean_seen, r.mean_unseen, r.diff)
        for r in table.itertuples()
    }
    expected = {
        # seen b3 0.72; unseen b4 0.84 (seen false) and u2.75 0.66
        ("nf", "sst2", "coalora"): (1, 2, 0.72, 0.75, 3.0),
        ("nf", "sst2", "coalora-r32"): (2, 1, 0.76, 0.60, -16.0),
        ("nf", "sst2", "coalora-frozen"): (2, 1, 0.74, 0.62, -12.0),
        # the base has seen null: u* names are its unseen configurations; no full precision
        ("nf", "sst2", "none"): (1, 1, 0.50, 0.48, -2.0),
        ("int", "sst2", "coalora"): (1, 2, 0.65, 0.675, 2.5),
        # perplexity in log space: geometric means, 100 x (ln 25 - ln 20)
        ("nf", "bible-lm", "coalora"): (1, 1, 20.0, 25.0, 100 * math.log(25 / 20)),
    }
    assert set(got) == set(expected)  # QLoRA (per configuration) has no unseen rows
    for key, values in expected.items():
        assert got[key] == pytest.approx(values), key
    assert one(table, task="bible-lm")["unit"] == "100*dln"
    # Every unseen point here lies outside its method's seen bit range: nothing to match.
    assert (table["n_matched"] == 0).all() and table["matched_diff"].isna().all()


def test_seen_unseen_matched_at_equal_bits(tmp_path):
    """An unseen point is compared with the seen curve interpolated at its average bits;
    unseen points outside the seen bit range are left out of the matched difference."""
    configs = [("b2.5", 2.5, 0.70, True), ("b3", 3.0, 0.80, True), ("u2.75", 2.75, 0.78, False),
               ("u4", 4.0, 0.95, False)]  # fmt: skip
    rows = [record("coalora", c, b, v, seen=s, trained="coalora") for c, b, v, s in configs]
    ppl = [("b2.5", 2.5, 100.0, True), ("b3", 3.0, 25.0, True), ("u2.75", 2.75, 40.0, False)]
    rows += [lm("coalora", c, b, v, seen=s, trained="coalora") for c, b, v, s in ppl]
    table = report.seen_unseen_table(read_results(write(tmp_path, rows)))
    acc = one(table, task="sst2")
    # interpolated seen accuracy at 2.75 bits: 0.75; unseen 0.78 -> +3 points
    assert (acc["n_matched"], acc["matched_diff"]) == (1, pytest.approx(3.0))
    assert acc["diff"] == pytest.approx(100 * ((0.78 + 0.95) / 2 - 0.75))  # mixes in 4 bits
    lm_row = one(table, task="bible-lm")
    # ln-interpolated seen perplexity at 2.75 bits: sqrt(100 * 25) = 50; unseen 40
    assert (lm_row["n_matched"], lm_row["matched_diff"]) == (1, pytest.approx(100 * math.log(0.8)))
    assert lm_row["mean_seen"] == pytest.approx(50.0)
    assert set(rows_by(table, task="sst2")["unit"]) == {"pp"}


def test_causal_lm_table_columns(results):
    table = report.causal_lm_table(results)
    assert list(table.columns) == [
        *["model", "task", "quantizer", "method", "seed", "config_name", "avg_bits", "seen"],
        *["perplexity", "bible_mc/acc"],
    ]  # no classification accuracy column: only the LM's metrics
    assert list(zip(table["method"], table["avg_bits"], table["perplexity"], strict=True)) == [
        ("coalora", 2.75, 25.0),
        ("coalora", 3.0, 20.0),
        ("none", 3.0, 40.0),
        ("qlora", 3.0, 22.0),
    ]
    assert list(table["seen"]) == [False, True, None, True]
    assert set(table["bible_mc/acc"]) == {0.25}


TABLE_NAMES = ["rank", "search", "quantizer", "seen_unseen", "causal_lm", "paper"]


def test_tables_cli_writes_every_table(paths, tmp_path, capsys):
    out = tmp_path / "tables"
    assert main(["report", "tables", *map(str, paths), "--out-dir", str(out)]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{n}.{e}" for n in TABLE_NAMES for e in ("csv", "md"))
    rank = pd.read_csv(out / "rank.csv")
    assert list(rank["method"]) == ["coalora-r32", "coalora"]
    assert rank["hv"].iloc[0] == pytest.approx(HV_COALORA_R32, rel=1e-5)
    md = (out / "seen_unseen.md").read_text().splitlines()
    assert md[0].startswith("| model | task | quantizer | method |") and len(md) == 2 + 6
    assert "no data" not in (out / "rank.md").read_text()


def test_tables_cli_writes_empty_tables_with_their_header(tmp_path):
    # QLoRA alone: nothing to ablate, one quantizer, no unseen configurations, no LM.
    paths = write(tmp_path / "results", qlora([0.7, 0.8]))
    out = tmp_path / "tables"
    assert main(["report", "tables", *map(str, paths), "--out-dir", str(out)]) == 0
    for name in ["rank", "search", "quantizer", "seen_unseen", "causal_lm"]:
        table = pd.read_csv(out / f"{name}.csv")
        assert table.empty and len(table.columns) >= 5, name
        lines = (out / f"{name}.md").read_text().splitlines()
        assert lines[0].startswith("| model | task |") and lines[1].startswith("|---")
        assert lines[-1].startswith("(no data: "), name
    assert "two or more LoRA ranks" in (out / "rank.md").read_text()
    paper = pd.read_csv(out / "paper.csv")  # relations need two methods: none here
    assert paper.empty and "relates" in (out / "paper.md").read_text()
    assert not list(out.glob("*.tmp"))


def legend_texts(fig):
    return [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().texts]


@pytest.mark.parametrize("kind", ["seen-unseen", "search-ablation"])
@pytest.mark.parametrize("data", ["full", "empty"])
def test_figure_cli_writes_png_and_svg(tmp_path, kind, data):
    records = RECORDS if data == "full" else qlora([0.7, 0.8])
    paths = write(tmp_path / "results", records)
    png, svg = tmp_path / "fig" / "f.png", tmp_path / "fig" / "f.svg"
    args = [*map(str, paths), "--out", str(png), "--svg", str(svg), "--title", "exp"]
    assert main(["report", kind, *args]) == 0
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 1000
    assert "<svg" in svg.read_text()


def test_seen_unseen_figure_content(results):
    fig = report.seen_unseen_figure(results, "exp")
    # One panel per group with unseen configurations: LM, sst2 INT, sst2 NF.
    assert [ax.get_title() for ax in fig.axes] == [
        "exp tiny-llama / bible-lm / nf",
        "exp tiny-roberta / sst2 / int",
        "exp tiny-roberta / sst2 / nf",
    ]
    nf = fig.axes[2]
    labels = [t.get_text() for t in nf.get_legend().texts]
    assert labels == [
        "coalora",
        "coalora-frozen",
        "coalora-r32",
        "none",
        "full precision",
        "seen (filled)",
        "unseen (hollow)",
    ]  # per-configuration QLoRA is not shown
    # coalora: 1 filled (seen b3) and 2 hollow (unseen) markers, white faces.
    filled, hollow = nf.collections[0], nf.collections[1]
    assert len(filled.get_offsets()) == 1 and len(hollow.get_offsets()) == 2
    assert tuple(hollow.get_facecolors()[0]) == (1.0, 1.0, 1.0, 1.0)


def test_pareto_figure_shows_seed_spread_and_log_perplexity(tmp_path):
    # QLoRA at two seeds on b3 and b4: the line goes through the seed means and a bar spans
    # the two seeds; the LM panel's perplexity axis is logarithmic.
    second = [
        dict(r, seed=1, metrics={"accuracy": r["metrics"]["accuracy"] - 0.1})
        for r in qlora([0.70, 0.80])
    ]
    lm_rows = [lm("qlora", "b3", 3.0, 22.0, seen=True, trained="qlora"), lm("none", "b3", 3.0, 4e6)]
    results = read_results(write(tmp_path, qlora([0.70, 0.80]) + second + lm_rows))
    fig = report.pareto_figure(results, "exp")
    lm_ax, sst2_ax = fig.axes
    assert lm_ax.get_yscale() == "log" and sst2_ax.get_yscale() == "linear"
    line = sst2_ax.get_lines()[0]
    assert list(line.get_ydata()) == pytest.approx([0.65, 0.75])
    assert "qlora (2 seeds)" in [t.get_text() for t in sst2_ax.get_legend().texts]
    bars = [c for c in sst2_ax.collections if c.__class__.__name__ == "LineCollection"]
    segments = bars[0].get_segments()
    assert [tuple(seg[:, 1]) for seg in segments] == [
        pytest.approx((0.6, 0.7)),
        pytest.approx((0.7, 0.8)),
    ]


def test_search_ablation_figure_content(results):
    fig = report.search_ablation_figure(results)
    assert len(fig.axes) == 1  # only sst2 NF has two search modes
    assert legend_texts(fig)[:4] == [
        "coalora (full)",
        "coalora-frozen (frozen)",
        "qlora",
        "none",
    ]
    empty = report.search_ablation_figure(results[results["method"] == "qlora"], "t")
    texts = [t.get_text() for t in empty.axes[0].texts]
    assert texts == ["no data: no CoA-LoRA runs with different search modes"]


def test_bad_results_file_is_a_one_line_error(paths, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    out = tmp_path / "tables"
    code = main(["report", "tables", str(paths[0]), str(bad), "--out-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("coalora: error: ") and err.count("\n") == 1
    assert str(bad) in err and not out.exists()
    missing = tmp_path / "missing.json"
    code = main(["report", "seen-unseen", str(missing), "--out", str(tmp_path / "f.png")])
    err = capsys.readouterr().err
    assert code == 2 and "not found" in err and err.count("\n") == 1
    assert not (tmp_path / "f.png").exists()


def test_two_results_for_one_method_and_configuration_are_refused(paths, tmp_path, capsys):
    """Two runs under one label (e.g. two experiments on the same model, task and quantizer)
    would merge into one group's points: refused, naming the method and configuration."""
    again = write(tmp_path / "again", [RECORDS[3]], name="again")  # QLoRA b3 once more
    with pytest.raises(
        ValueError, match="two results for method 'qlora' at seed 0 on configuration 'b3'"
    ):
        report.summary_table(read_results([*paths, *again]))
    out = tmp_path / "t1.csv"
    assert main(["report", "table1", *map(str, [*paths, *again]), "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'qlora'" in err[0] and not out.exists()


def test_a_method_only_at_full_precision_has_no_hypervolume():
    from coalora.report.groups import method_hypervolume

    full = pd.DataFrame({"avg_bits": [32.0], "value": [0.9], "higher_is_better": [True]})
    assert math.isnan(method_hypervolume(full))
    quantized = full.assign(avg_bits=[4.0])
    assert method_hypervolume(quantized) > 0
