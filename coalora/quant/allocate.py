"""From a bit budget to a per-matrix configuration: the ILP of docs/method.md 2.2.

For a budget ``beta`` (average bits per parameter) choose one option ``j`` per matrix ``i``::

    min  sum_ij cost_ij x_ij
    s.t. sum_j x_ij = 1                                      (one option per matrix)
         sum_ij numel_i bits_j x_ij <= beta sum_i numel_i    (the budget)
         x binary

solved with ``scipy.optimize.milp`` (HiGHS) to a relative gap of 1e-6 on the total cost (the
absolute gap is set to 0, so the guarantee is relative even for tiny costs). Exact reductions
come first, because costs spanning many orders of magnitude (2-bit versus 8-bit errors) with
many near-ties make the full 90,720-variable problem slow for HiGHS:

1. every option that another option of the same matrix dominates (no more bits and no more
   cost, one of the two strictly less) is dropped: swapping it for its dominator never hurts,
   so the optimum is unchanged, and the 432 options shrink to their Pareto front (~90 per
   matrix on SmolLM2);
2. the Lagrangian relaxation of the budget gives a lower bound and reduced costs
   (``_lagrangian_bounds``); the ILP restricted to each matrix's 3 options of least reduced
   cost (a small "core" problem) gives a near-optimal feasible solution;
3. every option whose Lagrangian lower bound exceeds that solution's cost cannot be in an
   optimal solution and is dropped; HiGHS solves what is left (a few hundred to a few
   thousand variables).

The solution is checked against the budget with the same arithmetic as
``ModelQConfig.avg_bits``; one that meets it only within HiGHS' feasibility tolerance is
solved again with a slightly tighter limit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import numbers
import os
import sys
import warnings

import numpy as np
import scipy
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_array

from ..io import cache_root, write_json
from .config import ALL_OPTIONS, MAX_BITS, MIN_BITS
from .model_config import ModelQConfig
from .targets import QuantTarget

log = logging.getLogger(__name__)

MIP_REL_GAP = 1e-6
# Seconds HiGHS may spend on one ILP. Models with many identical layers (random weights, or
# RoBERTa-large's 24 equal blocks) give near-symmetric problems whose optimality proof can
# run for hours; at the limit the best solution found is kept and its gap is logged.
TIME_LIMIT_S = 60.0
MAX_NODES = 500
_CORE = 3  # options per matrix in the core problem that gives the first feasible solution


def pareto_options(costs: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Indices of the options of one matrix that no other option dominates, by rising bits.

    Among options with equal bits and equal cost one (the lowest index) is kept.
    """
    order = np.lexsort((np.arange(len(costs)), costs, bits))  # by bits, then cost, then index
    sorted_costs = costs[order]
    # Keep an option iff it is strictly cheaper than everything with fewer or equal bits
    # that comes before it in this order.
    best_before = np.concatenate([[np.inf], np.minimum.accumulate(sorted_costs)[:-1]])
    return order[sorted_costs < best_before]


def _average_bits(numels, bits) -> float:
    # The arithmetic of model_config.average_bits, so that the check here is the check there.
    return sum(n * b for n, b in zip(numels, bits, strict=True)) / sum(numels)


def check_budget(budget: float, numels, option_bits) -> None:
    """One-line ValueError unless ``budget`` is in [MIN_BITS, MAX_BITS] and reachable."""
    if not isinstance(budget, numbers.Real) or isinstance(budget, bool) or math.isnan(budget):
        raise ValueError(f"budget must be a number of bits per parameter, got {budget!r}")
    if not MIN_BITS <= budget <= MAX_BITS:
        raise ValueError(
            f"budget {budget} bits is outside the range of the configuration space "
            f"[{MIN_BITS}, {MAX_BITS}]"
        )
    cheapest = _average_bits(numels, [float(np.min(option_bits))] * len(numels))
    if budget < cheapest:
        raise ValueError(
            f"budget {budget} bits is below {cheapest}, the cheapest the allowed options reach "
            f"(range [{cheapest}, {MAX_BITS}])"
        )


def _lagrangian_bounds(cost: np.ndarray, weight: np.ndarray, budget: float, numels, bits):
    """Bounds on the optimum from the Lagrangian relaxation of the budget.

    ``cost`` and ``weight`` (average bits contributed) are [N, K], padded with +inf cost.
    For any multiplier ``lam >= 0``, ``L(lam) = sum_i min_j (cost + lam weight) - lam budget``
    is a lower bound on the optimum (weak duality), whatever numerical error went into
    finding ``lam``; and a solution containing option (i, j) costs at least ``L(lam)`` plus
    that option's reduced cost ``cost_ij + lam weight_ij - min_j (cost_ij + lam weight_ij)``.
    The greedy choice ``argmin_j (cost + lam weight)`` for a ``lam`` just large enough to meet
    the budget is feasible and gives the upper bound. Returns (lam, lower, upper choice).
    """
    rows = np.arange(len(cost))

    def greedy(lam):
        return np.argmin(cost + lam * weight, axis=1)

    def fits(choice):
        return _average_bits(numels, bits[rows, choice].tolist()) <= budget

    def lower(lam):
        return float(np.min(cost + lam * weight, axis=1).sum() - lam * budget)

    if fits(greedy(0.0)):
        return 0.0, lower(0.0), greedy(0.0)
    low, high = 0.0, 1.0
    while not fits(greedy(high)):
        low, high = high, high * 2
        if high > 1e300:
            raise RuntimeError(f"no multiplier meets budget {budget}")
    for _ in range(200):  # bisection down to adjacent floats
        middle = 0.5 * (low + high)
        if not low < middle < high:
            break
        low, high = (low, middle) if fits(greedy(middle)) else (middle, high)
    lam = low if lower(low) > lower(high) else high
    filled = _fill_budget(cost, weight, budget, greedy(high))
    return lam, lower(lam), filled if fits(filled) else greedy(high)


def _fill_budget(cost: np.ndarray, weight: np.ndarray, budget: float, choice: np.ndarray):
    """Improve a feasible choice greedily: while some matrix can move to a cheaper option
    within the budget left, make the move that lowers the cost most."""
    rows = np.arange(len(cost))
    choice = choice.copy()
    # Leave a hair of the budget unused, so that float rounding never breaks feasibility.
    slack = budget * (1 - 1e-12) - weight[rows, choice].sum()
    while True:
        gain = cost[rows, choice][:, None] - cost
        extra = weight - weight[rows, choice][:, None]
        gain[(extra > slack) | ~(gain > 0)] = 0.0
        if not gain.any():
            return choice
        i, j = np.unravel_index(np.argmax(gain), gain.shape)
        slack -= extra[i, j]
        choice[i] = j


def solve_allocation(
    costs,
    numels,
    option_bits,
    budget: float,
    mip_rel_gap: float = MIP_REL_GAP,
    time_limit: float = TIME_LIMIT_S,
) -> list[int]:
    """Optimal option index per matrix (``costs`` [N, O], ``numels`` [N], ``option_bits`` [O]).

    Optimal up to ``mip_rel_gap``, unless a HiGHS solve reaches ``time_limit`` seconds: then
    the best feasible solution found so far is returned and a warning gives its gap."""
    costs = np.asarray(costs.detach().cpu() if isinstance(costs, torch.Tensor) else costs)
    costs = costs.astype(np.float64)
    option_bits = np.asarray(option_bits, dtype=np.float64)
    numels = [int(n) for n in numels]
    if costs.ndim != 2 or costs.shape != (len(numels), len(option_bits)):
        raise ValueError(
            f"costs have shape {costs.shape}, expected ({len(numels)}, {len(option_bits)}) "
            "(matrices x options)"
        )
    if not np.isfinite(costs).all():
        i, j = np.argwhere(~np.isfinite(costs))[0]
        raise ValueError(
            f"costs contain NaN or infinite values, e.g. costs[{i}, {j}] = {costs[i, j]}"
        )
    if min(numels, default=0) < 1:
        raise ValueError("every matrix needs a positive number of elements")
    check_budget(budget, numels, option_bits)

    # 1. Pareto fronts, as a padded [N, K] problem (padding: infinite cost). Costs are kept
    #    relative to each matrix's cheapest option (a constant shift of the objective) for
    #    the bounds below; HiGHS gets the full costs back.
    kept = [pareto_options(row, option_bits) for row in costs]
    width = max(len(k) for k in kept)
    option = np.zeros((len(kept), width), dtype=np.int64)
    cost = np.full((len(kept), width), np.inf)
    for i, k in enumerate(kept):
        option[i, : len(k)] = k
        option[i, len(k) :] = k[0]
        cost[i, : len(k)] = costs[i, k] - costs[i, k].min()
    bits = option_bits[option]
    weight = np.array(numels, dtype=np.float64)[:, None] / sum(numels) * bits

    # 2. Bounds from the Lagrangian relaxation, and a good feasible solution: the exact ILP
    #    restricted to a "core" of each matrix's few options nearest the Lagrangian optimum
    #    (smallest reduced cost), which HiGHS solves quickly.
    rows = np.arange(len(cost))
    lam, lower, best = _lagrangian_bounds(cost, weight, budget, numels, bits)
    upper = float(cost[rows, best].sum())
    if upper <= 0:  # every matrix at its cheapest option already fits: nothing to trade off
        return [int(option[i, j]) for i, j in enumerate(best)]
    reduced = cost + lam * weight
    reduced -= reduced.min(axis=1, keepdims=True)
    nearest = np.sort(reduced, axis=1)[:, min(_CORE, width) - 1 : min(_CORE, width)]
    core = (reduced <= nearest) & np.isfinite(cost)  # (padding has infinite cost)
    core[rows, best] = True
    floor = costs.min(axis=1)
    solve = (cost, weight, floor, budget, numels, bits, mip_rel_gap, time_limit)
    found = _solve_subset(core, *solve)
    if found is not None and cost[rows, found].sum() < upper:
        best, upper = found, float(cost[rows, found].sum())

    # 3. Drop every option that cannot be in an optimal solution (its Lagrangian lower bound
    #    exceeds the cost of the feasible solution), then solve the exact ILP on the rest,
    #    unless the core already held all of it.
    useful = lower + reduced <= upper * (1 + 1e-9)  # a hair of slack for rounding
    useful[rows, best] = True
    if (useful & ~core).any():
        found = _solve_subset(useful, *solve)
        # (within the gap, HiGHS may stop above the core's solution)
        if found is not None and cost[rows, found].sum() < upper:
            best = found
    return [int(option[i, j]) for i, j in enumerate(best)]


def remembered_allocation(costs, numels, option_bits, budget: float) -> list[int]:
    """:func:`solve_allocation`, remembered under ``$COALORA_CACHE/ilp/`` by a hash of its
    inputs (costs, sizes, option bits, budget, solver settings and scipy's version).

    A workflow solves the same ILPs in several jobs (``allocate`` writes the evaluation
    configurations; every CoA-LoRA and Shared-LoRA training job solves its training budgets
    again, 2-4 s each): the first solves, the rest read. A damaged entry is solved again."""
    costs = np.ascontiguousarray(
        costs.detach().cpu() if isinstance(costs, torch.Tensor) else costs, dtype=np.float64
    )
    digest = hashlib.sha256()
    for part in (
        costs,
        np.asarray(numels, dtype=np.int64),
        np.asarray(option_bits, dtype=np.float64),
        np.asarray([budget, MIP_REL_GAP, TIME_LIMIT_S, MAX_NODES, _CORE], dtype=np.float64),
    ):
        digest.update(repr(part.shape).encode() + part.tobytes())
    digest.update(scipy.__version__.encode())
    path = cache_root() / "ilp" / f"{digest.hexdigest()[:32]}.json"
    if path.is_file():
        try:
            choice = json.loads(path.read_text())
            if (
                isinstance(choice, list)
                and len(choice) == costs.shape[0]
                and all(isinstance(j, int) and 0 <= j < costs.shape[1] for j in choice)
            ):
                return choice
        except ValueError:
            pass
        log.warning("ILP cache entry %s is damaged: solving again", path)
    choice = solve_allocation(costs, numels, option_bits, budget)
    write_json(path, choice)
    return choice


def _solve_subset(
    allowed, cost, weight, floor, budget, numels, bits, mip_rel_gap, time_limit
) -> np.ndarray | None:
    """The ILP over the ``allowed`` [N, K] options with HiGHS; the column chosen per row.

    None when HiGHS hit ``time_limit`` before finding any feasible solution."""
    row_of, col_of = np.nonzero(allowed)
    # HiGHS sees the full costs (its relative gap is then relative to the total error, the
    # ILP's objective as stated), scaled so that the dearest option costs 1.
    full = cost[row_of, col_of] + floor[row_of]
    c = full / max(float(full.max()), 1e-300)
    w = weight[row_of, col_of]
    offsets = np.searchsorted(row_of, np.arange(len(cost) + 1))
    n = len(cost)
    one_each = csr_array((np.ones(len(c)), (row_of, np.arange(len(c)))), shape=(n, len(c)))
    margin = 0.0
    for _attempt in range(6):
        with warnings.catch_warnings(), _c_stdout_discarded():
            # mip_abs_gap is not among milp's documented options; milp hands it to HiGHS.
            warnings.filterwarnings("ignore", "Unrecognized options", RuntimeWarning)
            result = milp(
                c,
                integrality=np.ones(len(c)),
                bounds=Bounds(0, 1),
                constraints=[
                    LinearConstraint(one_each, 1, 1),
                    LinearConstraint(w[None, :], -np.inf, float(budget) - margin),
                ],
                options={
                    "mip_rel_gap": mip_rel_gap,
                    "mip_abs_gap": 0.0,
                    "time_limit": time_limit,
                    "mip_max_nodes": MAX_NODES,
                },
            )
        # Time or node limit (scipy reports HiGHS' node limit as an unrecognised status 4):
        # keep the best solution found, if any.
        if result.status == 1 or "limit reached" in str(result.message):
            if result.x is None:
                log.warning("ILP for budget %s: no solution within its limits", budget)
                return None
            # HiGHS reports its node limit as "Solution limit reached".
            limit = "time limit" if "Time limit" in str(result.message) else "node limit"
            log.warning(
                "ILP for budget %s stopped at its %s, %.2g from optimal (relative)",
                budget,
                limit,
                getattr(result, "mip_gap", float("nan")),
            )
        elif result.status != 0 or result.x is None:
            raise RuntimeError(
                f"ILP for budget {budget} not solved to optimality: status {result.status} "
                f"({result.message})"
            )
        # Each matrix's variables are contiguous; take its largest (integral up to tolerance).
        choice = np.array(
            [
                col_of[begin + np.argmax(result.x[begin:end])]
                for begin, end in zip(offsets[:-1], offsets[1:], strict=True)
            ]
        )
        excess = _average_bits(numels, bits[np.arange(n), choice].tolist()) - budget
        if excess <= 0:
            return choice
        # HiGHS met the budget only up to its feasibility tolerance (~1e-7 bits): solve again
        # with a limit tightened by more than the excess.
        margin = max(2 * margin, 2 * excess, 1e-12 * budget)
    raise RuntimeError(f"ILP for budget {budget} kept exceeding it by {excess:.3g} bits")


@contextlib.contextmanager
def _c_stdout_discarded():
    """Discard what C code writes to file descriptor 1 meanwhile.

    HiGHS 1.12 (scipy's milp) prints a stray debug line,
    ``HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();``, straight to
    fd 1 whatever its output options say (ERGO-Code/HiGHS#2783); dozens of them otherwise
    land in a workflow's terminal. Python's own buffered output is flushed first, so it is
    not lost."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no fd 1 (a detached process): nothing to protect
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            try:
                yield
            finally:
                os.dup2(saved, 1)
    finally:
        os.close(saved)


def allocate(
    targets: list[QuantTarget],
    costs,
    budget: float,
    quantizer: str = "nf",
    model: str | None = None,
    name: str | None = None,
) -> ModelQConfig:
    """The configuration of least total cost whose average bits are at most ``budget``."""
    costs = np.asarray(costs.detach().cpu() if isinstance(costs, torch.Tensor) else costs)
    if costs.shape != (len(targets), len(ALL_OPTIONS)):
        raise ValueError(
            f"cost table has shape {costs.shape}, expected ({len(targets)}, {len(ALL_OPTIONS)})"
        )
    bad = np.argwhere(~np.isfinite(costs))
    if len(bad):
        i, j = bad[0]
        raise ValueError(
            f"cost of {targets[i].name!r} under {ALL_OPTIONS[j]} is {costs[i, j]} "
            f"({len(bad)} non-finite entries, e.g. from an fp16 second-level scale above 65504)"
        )
    option_bits = [qc.bits for qc in ALL_OPTIONS]
    choice = remembered_allocation(costs, [t.numel for t in targets], option_bits, budget)
    mqc = ModelQConfig.from_list(
        targets,
        [ALL_OPTIONS[j] for j in choice],
        quantizer=quantizer,
        budget=float(budget),
        model=model,
        name=name if name is not None else f"ilp-{budget:.2f}",
        extra={"ilp_cost": float(sum(costs[i, j] for i, j in enumerate(choice)))},
    )
    assert mqc.avg_bits <= budget, (mqc.avg_bits, budget)  # solve_allocation checked it
    return mqc


def budget_grid(start: float, stop: float, step: float, keep_every: int = 1) -> list[float]:
    """Budgets ``start, start + step, ...`` below ``stop`` (half-open, like ``range``), then
    every ``keep_every``-th of them, rounded to 10 decimals so that 2.25 + 2*0.05 is 2.35.

    ``budget_grid(2.25, 7.25, 0.05, keep_every=2)`` is the paper's initial training set:
    2.25, 2.35, ..., 7.15 (50 budgets).
    """
    if not (step > 0 and math.isfinite(step)) or not (math.isfinite(start) and stop > start):
        raise ValueError(
            f"budget grid needs start < stop and step > 0, got {start}, {stop}, {step}"
        )
    if isinstance(keep_every, bool) or not isinstance(keep_every, int) or keep_every < 1:
        raise ValueError(f"keep_every must be a positive integer, got {keep_every!r}")
    # Count the steps with a tolerance, so that (7.25 - 2.25) / 0.05 = 99.99999999999999 is 100.
    count = math.ceil((stop - start) / step - 1e-9)
    values = [round(start + i * step, 10) for i in range(count)]
    return values[::keep_every]


def allocate_grid(
    targets: list[QuantTarget],
    costs,
    budgets,
    quantizer: str = "nf",
    model: str | None = None,
) -> list[ModelQConfig]:
    """ILP configurations for each budget, in order; a configuration equal to an earlier
    one (e.g. two budgets past the point where the cost stops falling) is skipped."""
    configs, seen = [], set()
    for budget in budgets:
        mqc = allocate(targets, costs, budget, quantizer=quantizer, model=model)
        if mqc.key() not in seen:
            seen.add(mqc.key())
            configs.append(mqc)
    return configs
