"""Cost tables (docs/method.md 2.2), the diagonal Fisher, their cache, and the budget ILP."""

import itertools
import json
import math
import os

import numpy as np
import pytest
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_array

from coalora.quant import ALL_OPTIONS, MAX_BITS, MIN_BITS, ModelQConfig, QuantConfig
from coalora.quant.allocate import (
    _c_stdout_discarded,
    allocate,
    allocate_grid,
    budget_grid,
    pareto_options,
    solve_allocation,
)
from coalora.quant.blockwise import quantize, quantize_dequantize
from coalora.quant.codebooks import codebook, midpoints
from coalora.quant.cost import (
    CHUNK,
    _cell_grid,
    _Workspace,
    cost_table,
    fisher_diagonal,
    hash_weights,
    load_cost_table,
    sampled_chunks,
    save_cost_table,
)
from coalora.quant.targets import QuantTarget, quantizable_targets

from tiny_models import tiny_llama

BITS = np.array([qc.bits for qc in ALL_OPTIONS])


@pytest.fixture(autouse=True)
def one_thread():
    # torch's rounding kernels go parallel even on tiny tensors; on a busy 2-core machine each
    # call then stalls for milliseconds. These tests quantize hundreds of tiny matrices.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def matrices(*shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    weights = {f"m{i}": torch.randn(*s, generator=gen) * 0.02 for i, s in enumerate(shapes)}
    targets = [QuantTarget(f"m{i}", "q_proj", 0, s) for i, s in enumerate(shapes)]
    return weights, targets


def direct_error(weight, qc, fisher=None, quantizer="nf"):
    diff = weight.double() - quantize_dequantize(weight, qc, quantizer).double()
    return float(((diff**2) * (1.0 if fisher is None else fisher.double())).sum())


def exact_product_error(weight, qc, quantizer="nf"):
    """The error with the dequantized value l * s^ kept in float64 (no float32 rounding)."""
    qt = quantize(weight, qc, quantizer)
    levels = codebook(qc.b, quantizer)[qt.codes.long()].double().view(-1, qc.B1, qc.B0)
    deq = (levels * qt.scales().double().unsqueeze(-1)).reshape(-1)[: weight.numel()]
    return float(((weight.double().reshape(-1) - deq) ** 2).sum())


# --- the cost table equals the quantizer ------------------------------------------------


def test_cell_grid_equals_bucketize_for_every_b():
    work = _Workspace(4096)
    for quantizer in ("nf", "int"):
        grid = _cell_grid(quantizer)
        bounds = torch.from_numpy(grid.boundaries)
        tricky = torch.cat(
            [
                bounds,
                torch.nextafter(bounds, torch.tensor(2.0)),
                torch.nextafter(bounds, torch.tensor(-2.0)),
                torch.tensor([0.0, -0.0, 1.0, -1.0, 1.5, -1.5, 1e30, -1e30, 3e-39]),
                torch.randn(2000, generator=torch.Generator().manual_seed(1)) * 0.7,
            ]
        ).to(torch.float32)
        cells = torch.from_numpy(grid.cells(tricky.numpy(), work).copy()).long()
        assert torch.equal(cells, torch.bucketize(tricky, bounds))
        for b in (2, 3, 4, 8):
            levels = codebook(b, quantizer)
            expected = levels[torch.bucketize(tricky, midpoints(levels))].double()
            assert torch.equal(torch.from_numpy(grid.cell_levels[b])[cells], expected)


@pytest.mark.parametrize("quantizer", ["nf", "int"])
def test_cost_table_equals_direct_quantize_dequantize(quantizer):
    # 37 x 29 = 1073 weights: not a multiple of any B0 * B1, so every option pads.
    weights, targets = matrices((40, 48), (37, 29))
    weights["m0"][3, 5] = 0.4  # an outlier block
    table = cost_table(weights, targets, quantizer=quantizer, progress=False)
    assert table.dtype == torch.float64 and table.shape == (2, 432)
    for i, target in enumerate(targets):
        weight = weights[target.name]
        direct = torch.tensor(
            [direct_error(weight, qc, quantizer=quantizer) for qc in ALL_OPTIONS],
            dtype=torch.float64,
        )
        exact = torch.tensor(
            [exact_product_error(weight, qc, quantizer) for qc in ALL_OPTIONS], dtype=torch.float64
        )
        # The direct path rounds l * s^ to float32: agreement to float32 rounding.
        torch.testing.assert_close(table[i], direct.double(), rtol=2e-5, atol=0)
        # Codes and scales are identical: with l * s^ in float64 the sums agree to 1e-8.
        torch.testing.assert_close(table[i], exact.double(), rtol=1e-8, atol=0)


def test_costs_fall_as_b_rises_for_fixed_scale_settings():
    weights, targets = matrices((64, 96))
    table = cost_table(weights, targets, progress=False)[0]
    for b0, d1, B0, B1 in itertools.product(
        (2, 3, 4, 8), ("bf16", "fp16", "fp32"), (16, 32, 64), (16, 64, 256)
    ):
        costs = [table[QuantConfig(b, b0, d1, B0, B1).index] for b in (2, 3, 4, 8)]
        assert costs[0] > costs[1] > costs[2] > costs[3] > 0


def test_fisher_weighting():
    weights, targets = matrices((32, 64), (16, 64))
    ones = cost_table(weights, targets, progress=False)
    fisher = {
        "m0": torch.zeros(32, 64),  # insensitive matrix: every option is free
        "m1": torch.full((16, 64), 2.5),  # uniform Fisher: a constant factor
    }
    weighted = cost_table(weights, targets, fisher=fisher, progress=False)
    assert torch.count_nonzero(weighted[0]) == 0
    torch.testing.assert_close(weighted[1], 2.5 * ones[1], rtol=1e-9, atol=0)

    # Fisher on a single weight: the cost is that weight's own squared error.
    single = torch.zeros(16, 64)
    single[7, 11] = 3.0
    table = cost_table({"m1": weights["m1"]}, targets[1:], fisher={"m1": single}, progress=False)
    for qc in ALL_OPTIONS[::37]:
        expected = direct_error(weights["m1"], qc, fisher=single)
        assert table[0, qc.index].item() == pytest.approx(expected, rel=1e-4, abs=1e-18)


def test_sampled_table_is_the_scaled_error_of_whole_chunks():
    # 8 chunks; sample 2. Make the matrix's smallest first-level scale (the offset o) live in
    # a chunk that is not sampled: the sample must still use it.
    weights, targets = matrices((128, 1024), seed=3)
    numel = 128 * 1024
    chunks = sampled_chunks("m0", numel, 2 * CHUNK)
    assert len(chunks) == 2
    outside = next(c for c in range(8) if c not in set(chunks.tolist()))
    flat = weights["m0"].view(-1)
    flat[outside * CHUNK : outside * CHUNK + 64] *= 1e-3
    table = cost_table(weights, targets, max_elements=2 * CHUNK, progress=False)[0]
    mask = torch.zeros(numel, dtype=torch.bool)
    for c in chunks.tolist():
        mask[c * CHUNK : (c + 1) * CHUNK] = True
    for qc in ALL_OPTIONS[::19]:
        diff = weights["m0"].double() - quantize_dequantize(weights["m0"], qc).double()
        expected = 4.0 * float((diff.view(-1)[mask] ** 2).sum())
        assert table[qc.index].item() == pytest.approx(expected, rel=2e-5)


def test_sampled_estimate_is_close_to_the_exact_table():
    weights, targets = matrices((256, 1024), seed=4)  # 16 chunks
    exact = cost_table(weights, targets, progress=False)[0]
    sampled = cost_table(weights, targets, max_elements=4 * CHUNK, progress=False)[0]
    error = (sampled / exact - 1).abs()
    assert float(error.median()) < 0.02 and float(error.quantile(0.9)) < 0.05
    # The noisiest are options whose error comes from a few clipped blocks (8-bit weights
    # under 2-bit scales); even they stay within a quarter.
    assert float(error.max()) < 0.25
    # Enough elements to cover the matrix: the exact table.
    again = cost_table(weights, targets, max_elements=10**9, progress=False)[0]
    assert torch.equal(again, exact)


def test_sampled_last_chunk_with_padding():
    # 3 chunks, the last one mostly padding; sample 2 of them, repeatedly with other names.
    shape = (2 * CHUNK // 64 + 5, 64)
    weights, _ = matrices(shape, seed=5)
    numel = shape[0] * shape[1]
    for name in ("a", "b", "c", "d", "e", "f"):
        target = [QuantTarget(name, "q_proj", 0, shape)]
        chunks = sampled_chunks(name, numel, 2 * CHUNK).tolist()
        table = cost_table({name: weights["m0"]}, target, max_elements=2 * CHUNK, progress=False)
        mask = torch.zeros(3 * CHUNK, dtype=torch.bool)
        for c in chunks:
            mask[c * CHUNK : (c + 1) * CHUNK] = True
        mask = mask[:numel]
        qc = QuantConfig(3, 4, "bf16", 32, 64)
        diff = weights["m0"].double() - quantize_dequantize(weights["m0"], qc).double()
        expected = 1.5 * float((diff.view(-1)[mask] ** 2).sum())
        assert table[0, qc.index].item() == pytest.approx(expected, rel=2e-5)


def test_cost_table_rejects_bad_inputs():
    weights, targets = matrices((16, 16))
    with pytest.raises(ValueError, match="no tensor for module 'm0'"):
        cost_table({}, targets, progress=False)
    with pytest.raises(ValueError, match=r"shape \(16, 8\)"):
        cost_table({"m0": torch.zeros(16, 8)}, targets, progress=False)
    bad = {"m0": weights["m0"].clone()}
    bad["m0"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        cost_table(bad, targets, progress=False)
    with pytest.raises(ValueError, match="Fisher of 'm0' has negative"):
        cost_table(weights, targets, fisher={"m0": -torch.ones(16, 16)}, progress=False)
    with pytest.raises(ValueError, match="max_elements"):
        cost_table(weights, targets, max_elements=0, progress=False)
    with pytest.raises(ValueError, match="unknown quantizer"):
        cost_table(weights, targets, quantizer="fp", progress=False)


# --- Fisher --------------------------------------------------------------------------------


def batches(seed=0, count=2):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(0, 64, (2, 8), generator=gen)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    return out


def test_fisher_diagonal_is_mean_squared_gradient():
    model = tiny_llama()
    targets = quantizable_targets(model)
    model.train()
    model.lm_head.weight.requires_grad_(False)
    data = batches()
    fisher = fisher_diagonal(model, data, targets)
    # Flags and mode are restored.
    assert model.training and not model.lm_head.weight.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if "lm_head" not in n)

    model.eval()
    modules = dict(model.named_modules())
    expected = {t.name: torch.zeros(t.shape) for t in targets}
    for batch in data:
        model.zero_grad()
        model(**batch).loss.backward()
        for t in targets:
            expected[t.name] += modules[t.name].weight.grad ** 2 / len(data)
    assert list(fisher) == [t.name for t in targets]
    for t in targets:
        torch.testing.assert_close(fisher[t.name], expected[t.name], rtol=1e-5, atol=1e-12)
    assert fisher_diagonal(model, data, targets)[targets[0].name].equal(fisher[targets[0].name])


def test_fisher_diagonal_errors():
    model = tiny_llama()
    targets = quantizable_targets(model)
    with pytest.raises(ValueError, match="at least one calibration batch"):
        fisher_diagonal(model, [], targets)
    unlabeled = [{k: v for k, v in batches()[0].items() if k != "labels"}]
    with pytest.raises(ValueError, match="labels"):
        fisher_diagonal(model, unlabeled, targets)
    with pytest.raises(ValueError, match="no module 'nope'"):
        fisher_diagonal(model, batches(), [QuantTarget("nope", "q_proj", 0, (2, 2))])


def test_fisher_weighted_table_of_a_model_drives_allocation():
    model = tiny_llama()
    targets = quantizable_targets(model)
    modules = dict(model.named_modules())
    base = {t.name: modules[t.name].weight.detach().clone() for t in targets}
    fisher = fisher_diagonal(model, batches(), targets)
    table = cost_table(base, targets, fisher=fisher, progress=False)
    plain = cost_table(base, targets, progress=False)
    assert not torch.allclose(
        table / table.sum(1, keepdim=True), plain / plain.sum(1, keepdim=True)
    )
    mqc = allocate(targets, table, 3.5, model="tiny-llama")
    assert mqc.avg_bits <= 3.5 and mqc.budget == 3.5 and mqc.name == "ilp-3.50"


# --- cache ---------------------------------------------------------------------------------


def test_cache_round_trip_and_mismatches(tmp_path):
    weights, targets = matrices((16, 32), (8, 32))
    table = cost_table(weights, targets, progress=False)
    digest = hash_weights(weights, targets)
    path = tmp_path / "costs.safetensors"
    save_cost_table(path, table, targets, quantizer="nf", max_elements=None, weights_hash=digest)
    index = json.loads((tmp_path / "costs.json").read_text())
    assert index["modules"] == ["m0", "m1"] and index["shapes"] == [[16, 32], [8, 32]]
    assert index["quantizer"] == "nf" and index["fisher_weighted"] is False
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    loaded = load_cost_table(path, targets, quantizer="nf", weights_hash=digest)
    assert torch.equal(loaded.costs, table)
    assert loaded.modules == ["m0", "m1"] and loaded.weights_hash == digest

    renamed = [QuantTarget("x", "q_proj", 0, (16, 32)), targets[1]]
    with pytest.raises(ValueError, match=r"costs\.safetensors does not fit the model.*'m0' vs 'x'"):
        load_cost_table(path, renamed)
    with pytest.raises(ValueError, match="does not fit the model: 2 modules vs the model's 1"):
        load_cost_table(path, targets[:1])
    reshaped = [QuantTarget("m0", "q_proj", 0, (32, 16)), targets[1]]
    with pytest.raises(ValueError, match=r"module 'm0' has shape \(16, 32\)"):
        load_cost_table(path, reshaped)
    with pytest.raises(ValueError, match="quantizer 'nf', not 'int'"):
        load_cost_table(path, targets, quantizer="int")
    with pytest.raises(ValueError, match="different base weights"):
        load_cost_table(path, targets, weights_hash="0" * 64)
    with pytest.raises(ValueError, match="is not Fisher-weighted, expected Fisher-weighted"):
        load_cost_table(path, targets, fisher_weighted=True)
    with pytest.raises(ValueError, match="max_elements=None, expected 65536"):
        load_cost_table(path, targets, max_elements=65536)
    assert load_cost_table(path, targets, fisher_weighted=False, max_elements=None).costs.equal(
        table
    )

    # A table that is not the one its index describes.
    save_cost_table(tmp_path / "other.safetensors", table * 2, targets)
    (tmp_path / "other.safetensors").replace(path)
    with pytest.raises(ValueError, match=r"costs\.safetensors does not match its index"):
        load_cost_table(path, targets)
    # A corrupt table, a corrupt index, a missing index.
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"cost table .*costs\.safetensors is unreadable"):
        load_cost_table(path, targets)
    (tmp_path / "costs.json").write_text("{")
    with pytest.raises(ValueError, match=r"costs\.json is not valid JSON"):
        load_cost_table(path, targets)
    (tmp_path / "costs.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"costs\.json"):
        load_cost_table(path, targets)
    with pytest.raises(ValueError, match=r"\.safetensors"):
        save_cost_table(tmp_path / "costs.pt", table, targets)


# --- the ILP -------------------------------------------------------------------------------


def exhaustive(costs, numels, bits, budget):
    best = None
    total = sum(numels)
    for combo in itertools.product(range(costs.shape[1]), repeat=costs.shape[0]):
        if sum(n * bits[j] for n, j in zip(numels, combo, strict=True)) / total <= budget:
            value = sum(costs[i, j] for i, j in enumerate(combo))
            best = value if best is None else min(best, value)
    return best


def random_instance(rng):
    n, o = int(rng.integers(2, 5)), int(rng.integers(2, 7))
    # Real option bits (ties between bf16 and fp16 included) and some tied costs.
    bits = BITS[rng.choice(len(BITS), size=o)]
    costs = rng.random((n, o)) * 10 ** rng.uniform(-9, 4)
    costs[rng.random((n, o)) < 0.2] = costs[0, 0]
    numels = [int(v) for v in rng.integers(1, 5000, n)]
    # A budget between the cheapest choice and the unconstrained optimum, where it binds.
    cheapest = sum(v * bits.min() for v in numels) / sum(numels)
    free = sum(v * bits[j] for v, j in zip(numels, costs.argmin(1), strict=True)) / sum(numels)
    budget = float(rng.uniform(cheapest, max(free, cheapest)))
    return costs, numels, bits, budget


def test_ilp_matches_exhaustive_search():
    rng = np.random.default_rng(0)
    for _ in range(150):
        costs, numels, bits, budget = random_instance(rng)
        choice = solve_allocation(costs, numels, bits, budget)
        assert sum(n * bits[j] for n, j in zip(numels, choice, strict=True)) / sum(numels) <= budget
        best = exhaustive(costs, numels, bits, budget)
        got = sum(costs[i, j] for i, j in enumerate(choice))
        assert got == pytest.approx(best, rel=1e-6, abs=0)


def test_pareto_pruning_keeps_exactly_the_undominated_options_and_the_optimum():
    rng = np.random.default_rng(1)
    for _ in range(60):
        costs, numels, bits, budget = random_instance(rng)
        for row in costs:
            kept = set(pareto_options(row, bits).tolist())
            for j in range(len(row)):
                dominated = any(
                    bits[k] <= bits[j]
                    and row[k] <= row[j]
                    and (bits[k] < bits[j] or row[k] < row[j])
                    for k in range(len(row))
                )
                duplicate = any(
                    bits[k] == bits[j] and row[k] == row[j] and k < j for k in range(len(row))
                )
                assert (j in kept) == (not dominated and not duplicate)
        # The optimum over the pruned options equals the optimum over all options.
        best = exhaustive(costs, numels, bits, budget)
        pruned = np.full_like(costs, 1e30)
        for i, row in enumerate(costs):
            keep = pareto_options(row, bits)
            pruned[i, keep] = row[keep]
        assert exhaustive(pruned, numels, bits, budget) == pytest.approx(best, rel=1e-12)


def random_table(targets, seed=0):
    # Errors that fall with every field that adds bits, scaled per matrix, with noise.
    rng = np.random.default_rng(seed)
    base = np.array(
        [
            2.0 ** (-2 * qc.b) * (1 + qc.B0 / 64 + 1 / qc.b0) * (1.01 if qc.d1 == "bf16" else 1)
            for qc in ALL_OPTIONS
        ]
    )
    scale = rng.uniform(0.1, 10, (len(targets), 1))
    return torch.from_numpy(base * scale * (1 + 0.05 * rng.random((len(targets), 432))))


def test_allocate_respects_budget_and_cost_falls_with_budget():
    targets = quantizable_targets(tiny_llama())
    table = random_table(targets)
    previous = math.inf
    for budget in (MIN_BITS, 2.5, 3.0, 4.127, 5.0, 6.5, 8.0, MAX_BITS):
        mqc = allocate(targets, table, budget, model="tiny")
        assert isinstance(mqc, ModelQConfig) and mqc.budget == budget and mqc.model == "tiny"
        assert mqc.avg_bits <= budget
        cost = sum(table[i, mqc.modules[t.name].index].item() for i, t in enumerate(targets))
        assert cost == pytest.approx(mqc.extra["ilp_cost"])
        assert cost <= previous * (1 + 1e-6)
        previous = cost
    # At the smallest budget every matrix takes the cheapest option.
    assert {qc.bits for qc in allocate(targets, table, MIN_BITS).modules.values()} == {MIN_BITS}


@pytest.mark.parametrize("budget", [2.0, MIN_BITS - 1e-9, 8.7, float("nan"), float("inf")])
def test_budget_outside_range_raises(budget):
    targets = quantizable_targets(tiny_llama())
    with pytest.raises(ValueError, match=r"budget .*(2\.0322265625, 8\.625|number of bits)"):
        allocate(targets, random_table(targets), budget)


def test_budget_below_the_cheapest_allowed_options_raises():
    costs = np.array([[1.0, 0.5], [2.0, 1.0]])
    with pytest.raises(ValueError, match=r"budget 3\.5 bits is below 4\.0"):
        solve_allocation(costs, [10, 10], [4.0, 8.0], 3.5)
    assert solve_allocation(costs, [10, 10], [4.0, 8.0], 6.0) == [0, 1]


def test_solve_allocation_rejects_bad_tables():
    with pytest.raises(ValueError, match="shape"):
        solve_allocation(np.ones((2, 3)), [1, 1], [2.5, 3.0], 3.0)
    with pytest.raises(ValueError, match="NaN"):
        solve_allocation(np.array([[np.nan, 1.0]]), [1], [2.5, 3.0], 3.0)
    targets = quantizable_targets(tiny_llama())
    table = random_table(targets)
    table[2, 7] = float("nan")
    with pytest.raises(ValueError, match=rf"cost of '{targets[2].name}' under .* is nan"):
        allocate(targets, table, 4.0)


def test_budget_grid():
    grid = budget_grid(2.25, 7.25, 0.05, keep_every=2)
    assert len(grid) == 50
    assert grid[:3] == [2.25, 2.35, 2.45] and grid[-1] == 7.15
    full = budget_grid(2.25, 7.25, 0.05)
    assert len(full) == 100 and full[1] == 2.3 and full[-1] == 7.2
    assert budget_grid(3.0, 3.3, 0.1) == [3.0, 3.1, 3.2]
    with pytest.raises(ValueError, match="step"):
        budget_grid(3.0, 2.0, 0.1)
    with pytest.raises(ValueError, match="keep_every"):
        budget_grid(2.0, 3.0, 0.1, keep_every=0)


def test_allocate_grid_skips_duplicates():
    targets = quantizable_targets(tiny_llama())
    # Every matrix's cheapest option has 4.x bits: all budgets above it give one configuration.
    table = random_table(targets, seed=2)
    best = QuantConfig(4, 8, "fp32", 16, 16)
    table[:, best.index] = 0.0
    budgets = [3.0, 4.7, 5.0, 6.0, 7.0]
    configs = allocate_grid(targets, table, budgets, model="tiny")
    assert [c.budget for c in configs] == [3.0, 4.7]
    assert set(configs[1].modules.values()) == {best}
    assert len({c.key() for c in configs}) == len(configs)


def test_reductions_keep_the_optimum_of_the_full_ilp():
    # 24 matrices x all 432 options, solved by milp with no reduction at all, as a reference.
    targets = [QuantTarget(f"m{i}", "q_proj", 0, (64 * (1 + i % 3), 64)) for i in range(24)]
    costs = random_table(targets, seed=5).numpy()
    numels = np.array([t.numel for t in targets], dtype=np.float64)
    n, o = costs.shape
    rows = np.repeat(np.arange(n), o)
    one_each = csr_array((np.ones(n * o), (rows, np.arange(n * o))), shape=(n, n * o))
    weight = (numels[:, None] * BITS[None, :] / numels.sum()).reshape(1, -1)
    for budget in (2.6, 3.3, 4.4, 6.1):
        reference = milp(
            costs.reshape(-1) / costs.max(),
            integrality=np.ones(n * o),
            bounds=Bounds(0, 1),
            constraints=[
                LinearConstraint(one_each, 1, 1),
                LinearConstraint(weight, -np.inf, budget),
            ],
            options={"mip_rel_gap": 1e-9},
        )
        assert reference.status == 0
        choice = solve_allocation(costs, numels.astype(int), BITS, budget)
        got = costs[np.arange(n), choice].sum()
        assert got <= reference.fun * costs.max() * (1 + 1e-6)


def test_ragged_pareto_fronts():
    # Matrix 0 has a single useful option (it dominates the others); matrix 1 has three.
    costs = np.array([[1.0, 2.0, 3.0], [5.0, 3.0, 1.0], [4.0, 2.0, 2.0]])
    bits = np.array([3.0, 4.0, 5.0])
    for budget in (3.0, 3.5, 3.7, 4.0, 5.0):
        choice = solve_allocation(costs, [10, 10, 10], bits, budget)
        best = exhaustive(costs, [10, 10, 10], bits, budget)
        assert choice[0] == 0
        assert sum(costs[i, j] for i, j in enumerate(choice)) == pytest.approx(best)


# --- LQ-LoRA's allocation costs and the ILP's limits -------------------------------------------


def test_lowrank_costs_are_the_quantization_errors_of_the_svd_residual(tmp_path, monkeypatch):
    from coalora.budgets import AllocationSpec, configs_for_budgets, costs_for
    from coalora.models import load_model
    from coalora.quant import QuantizedBase
    from coalora.quant.lowrank import lowrank_residuals, svd_factors

    monkeypatch.setenv("COALORA_CACHE", str(tmp_path / "cache"))
    loaded = load_model("tiny-llama")
    qbase = QuantizedBase(loaded.model)
    rank = 4
    residuals = lowrank_residuals(qbase.base_weights, qbase.targets, rank, seed=0)
    t = qbase.targets[0]
    l1, l2 = svd_factors(qbase.base_weights[t.name], rank, randomized=True, seed=0)
    assert torch.allclose(residuals[t.name], qbase.base_weights[t.name] - l1 @ l2)
    # The residual has the singular values of W past the r-th: smaller than W's norm.
    assert residuals[t.name].norm() < qbase.base_weights[t.name].norm()

    lowrank = costs_for(loaded, qbase, AllocationSpec(lowrank_rank=rank, max_elements=4096))
    expected = cost_table(residuals, qbase.targets, max_elements=4096, progress=False)
    assert torch.equal(lowrank, expected)
    plain = costs_for(loaded, qbase, AllocationSpec(max_elements=4096))
    assert (lowrank < plain).float().mean() > 0.9  # less to quantize, smaller errors

    # Written to a file, the table records its rank; reading it for another rank is refused.
    path = tmp_path / "lowrank.safetensors"
    spec = AllocationSpec(lowrank_rank=rank, max_elements=4096, cost_table=str(path))
    costs_for(loaded, qbase, spec)
    assert load_cost_table(path, qbase.targets).lowrank_rank == rank
    with pytest.raises(ValueError, match="lowrank_rank=4, expected None"):
        costs_for(loaded, qbase, AllocationSpec(max_elements=4096, cost_table=str(path)))
    [mqc] = configs_for_budgets(loaded, [3.0], spec, qbase=qbase)
    assert mqc.avg_bits <= 3.0


def test_ilp_stopped_at_its_limits_still_gives_a_feasible_near_optimal_answer(caplog):
    # 64 matrices with nearly the same costs: HiGHS proves optimality of such problems very
    # slowly (random-weight or equal-block models give them).
    rng = np.random.default_rng(0)
    row = np.sort(rng.random(len(BITS)))[::-1] * (1 + 0.01 * rng.random(len(BITS)))
    costs = np.tile(row[np.argsort(np.argsort(BITS))], (64, 1))  # dearer at fewer bits
    costs *= 1 + 1e-3 * rng.random(costs.shape)
    numels = [4096] * 64
    # A zero time limit: HiGHS stops before any node, as it would at its limits on a big
    # model (RoBERTa-large shapes with random weights ran over 10 minutes without them); the
    # Lagrangian solution, filled greedily, is then the answer.
    with caplog.at_level("WARNING", logger="coalora.quant.allocate"):
        choice = solve_allocation(costs, numels, BITS, 3.3, time_limit=0.0)
    assert "no solution within its limits" in caplog.text
    bits = BITS[choice]
    assert bits.mean() <= 3.3
    total = costs[np.arange(64), choice].sum()
    # The optimum is bounded below by the LP relaxation; the answer must be within 1% of it.
    from scipy.optimize import linprog

    n, o = costs.shape
    a_eq = np.kron(np.eye(n), np.ones(o))
    lp = linprog(
        costs.ravel(), A_ub=np.tile(BITS, n)[None, :] / n, b_ub=[3.3], A_eq=a_eq,
        b_eq=np.ones(n), bounds=(0, 1), method="highs",
    )  # fmt: skip
    assert lp.status == 0 and total <= lp.fun * 1.01


def test_highs_stray_stdout_is_discarded_but_python_output_is_kept(capfd):
    """HiGHS 1.12 writes a debug line to fd 1 regardless of its options; the ILP call
    discards C-level stdout, and what Python printed before still comes out."""
    print("before", end=" ", flush=False)
    with _c_stdout_discarded():
        os.write(1, b"HighsMipSolverData::transformNewIntegerFeasibleSolution\n")
    print("after")
    os.write(1, b"fd 1 works again\n")
    out = capfd.readouterr().out
    assert "HighsMipSolverData" not in out
    assert out == "before after\nfd 1 works again\n"


def test_allocations_are_remembered_by_their_inputs(tmp_path, monkeypatch):
    """allocate() solves each ILP once per cache: the same table and budget are read back
    (no solve), another budget or table is solved, and a damaged entry is solved again."""
    import coalora.quant.allocate as allocate_module

    monkeypatch.setenv("COALORA_CACHE", str(tmp_path))
    targets = quantizable_targets(tiny_llama())
    table = random_table(targets)
    solves = []
    real_solve = allocate_module.solve_allocation

    def counted(*args, **kwargs):
        solves.append(args[3])
        return real_solve(*args, **kwargs)

    monkeypatch.setattr(allocate_module, "solve_allocation", counted)
    first = allocate(targets, table, 3.0)
    assert solves == [3.0] and len(list((tmp_path / "ilp").glob("*.json"))) == 1
    again = allocate(targets, table, 3.0)
    assert solves == [3.0] and again.to_dict() == first.to_dict()  # read back, not solved
    allocate(targets, table, 3.5)
    allocate(targets, table * 1.5 + torch.rand_like(table), 3.0)
    assert solves == [3.0, 3.5, 3.0] and len(list((tmp_path / "ilp").glob("*.json"))) == 3
    # The cached choice is what a fresh solve gives.
    assert [first.modules[t.name].index for t in targets] == real_solve(
        table, [t.numel for t in targets], [qc.bits for qc in ALL_OPTIONS], 3.0
    )
    # A damaged entry (truncated, or indices out of range) is solved again and rewritten.
    entry = next(p for p in (tmp_path / "ilp").glob("*.json") if p.read_text() == json.dumps(
        [first.modules[t.name].index for t in targets], indent=2) + "\n")  # fmt: skip
    for damage in ("[1, 2", json.dumps([10_000] * len(targets))):
        entry.write_text(damage)
        assert allocate(targets, table, 3.0).to_dict() == first.to_dict()
    assert solves == [3.0, 3.5, 3.0, 3.0, 3.0]
