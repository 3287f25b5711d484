"""Rounds of the Pareto-based configuration search (docs/method.md section 5).

``ParetoSearch`` holds the *pool* (every configuration evaluated so far, with its bits and
loss) and the *training set* (the configurations training samples from). Training calls
``run_round(n)`` once per epoch:

1. loss re-evaluation: with ``reevaluate_pool`` (default), every pool loss measured before this
   round is measured again with ``evaluate_loss`` (the adapted model changed since);
2. proposal of ``n`` new configurations, by mode:
   ``full``   fit the loss GP, run the log-EHVI coordinate search from K0 starts, drop end
              points equal to a pool member or to each other, then choose ``n`` of them
              greedily: the best, then the best given the GP's prediction for those chosen
              ("Kriging believer"), and so on;
   ``random`` ``n`` configurations drawn uniformly (every field index uniform), non-duplicate;
   ``frozen`` nothing: no evaluations, the training set never changes;
3. evaluation of the new configurations, added to the pool;
4. segmented Pareto filtering of the pool: the new training set.

Start points of the coordinate search: members of the current training set (drawn uniformly,
cycling so that K0 >= |set| uses each at least once), each with ``perturb_fraction`` of its
coordinates redrawn uniformly. Uniform random encodings would all sit near the mean bit-width
(a law of large numbers over N matrices); perturbing the set spreads starts along its front.

Every round returns a ``SearchRound`` (JSON via ``to_dict()``). Hypervolumes in it use the
frame of that round: objectives (loss, bits), ``ideal`` = per-objective minimum and ``ref`` =
maximum + ``ref_margin`` x range over the pool after the round, normalised by the box volume
(see ``pareto.hypervolume``); ``hv_before`` scores the previous training set with this round's
losses, ``hv_after`` the new one, so the two are comparable within a round, not across rounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..quant.model_config import ModelQConfig, field_cardinalities
from ..quant.targets import QuantTarget
from .coordinate import coordinate_search
from .pareto import hypervolume, reference_point, segmented_pareto_filter
from .surrogate import ACQUISITIONS, LENGTHSCALES, LogEHVIAcquisition

MODES = ("full", "frozen", "random")
LossFn = Callable[[list[ModelQConfig]], list[float]]


@dataclass
class SearchConfig:
    """Settings of the search; defaults follow docs/method.md section 5 where it gives numbers."""

    mode: str = "full"  # full | frozen | random
    n_starts: int | None = None  # K0; None -> 2 x the requested number of candidates
    max_steps: int = 10  # T: moves per walker
    n_segments: int = 40  # U
    bit_range: tuple[float, float] | None = None  # segments span; None -> observed min..max
    reevaluate_pool: bool = True  # re-measure stale pool losses at the start of a round
    perturb_fraction: float = 0.02  # share of a start's coordinates redrawn
    max_start_batches: int = 3  # further batches of K0 starts when duplicates leave too few
    lengthscales: str = "per_field"  # GP kernel, see surrogate.make_kernel
    acquisition: str = "analytic"  # exact log-EHVI, or "mc": botorch's qLogEHVI
    mc_samples: int = 128  # quasi-MC samples of the "mc" log-EHVI
    ref_margin: float = 0.1  # reference point = max + ref_margin x range
    batch_size: int = 1024  # acquisition evaluations per botorch call (memory bound)
    # torch threads while proposing (restored afterwards; evaluate_loss is not affected).
    # The GP/acquisition tensors are small: with two threads on two busy cores, measured
    # 10-100x slower per operation than with one. None leaves torch's setting alone.
    num_threads: int | None = 1
    seed: int = 0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown search mode {self.mode!r}; allowed values: {MODES}")
        if self.acquisition not in ACQUISITIONS:
            raise ValueError(
                f"unknown acquisition {self.acquisition!r}; allowed values: {ACQUISITIONS}"
            )
        if self.lengthscales not in LENGTHSCALES:
            raise ValueError(
                f"unknown lengthscales {self.lengthscales!r}; allowed values: {LENGTHSCALES}"
            )
        if self.n_starts is not None and self.n_starts < 1:
            raise ValueError(f"n_starts must be >= 1, got {self.n_starts}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {self.num_threads}")
        for name in ("max_steps", "n_segments", "max_start_batches", "mc_samples", "batch_size"):
            minimum = 0 if name == "max_steps" else 1
            if getattr(self, name) < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {getattr(self, name)}")
        if not 0 <= self.perturb_fraction <= 1:
            raise ValueError(f"perturb_fraction must be in [0, 1], got {self.perturb_fraction}")
        if self.ref_margin <= 0:
            raise ValueError(f"ref_margin must be positive, got {self.ref_margin}")
        if self.bit_range is not None and not (
            len(self.bit_range) == 2 and self.bit_range[0] < self.bit_range[1]
        ):
            raise ValueError(f"bit_range must be (low, high) with low < high, got {self.bit_range}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CandidateRecord:
    """One configuration proposed and evaluated in a round."""

    id: int  # position in the pool
    bits: float
    loss: float
    acquisition: float | None  # log-EHVI when chosen (full mode; None if -inf)
    steps: int | None  # coordinate moves from its start (full mode)
    encoding: str  # one digit per field index, 5 per matrix in target order


@dataclass
class SearchRound:
    """What one round did; ``to_dict()`` is JSON-ready."""

    index: int
    mode: str
    n_requested: int
    candidates: list[CandidateRecord]
    kept_ids: list[int]  # pool ids of the new training set
    kept_points: list[tuple[float | None, float]]  # their (loss, bits); None: not measured
    pool_size: int
    n_pool_reevaluated: int
    n_duplicates_rejected: int
    hv_before: float | None
    hv_after: float | None
    hv_reference: list[float] | None  # (loss, bits)
    hv_ideal: list[float] | None
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@contextmanager
def _torch_threads(count: int | None):
    """Run the block with ``count`` torch intra-op threads (None: unchanged)."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _encoding_string(encoding: np.ndarray) -> str:
    return "".join(str(int(i)) for i in encoding)


class ParetoSearch:
    """Pool, training set and rounds of the configuration search (see the module docstring)."""

    def __init__(
        self,
        targets: list[QuantTarget],
        evaluate_loss: LossFn,
        initial: list[ModelQConfig],
        config: SearchConfig | None = None,
        initial_losses: list[float] | None = None,
    ):
        self.targets = list(targets)
        self.evaluate_loss = evaluate_loss
        self.config = config or SearchConfig()
        if not initial:
            raise ValueError("the search needs at least one initial configuration")
        quantizers = {c.quantizer for c in initial}
        if len(quantizers) > 1:
            raise ValueError(f"initial configurations mix quantizers {sorted(quantizers)}")
        self.quantizer = initial[0].quantizer
        self.model_name = initial[0].model
        self.cardinalities = field_cardinalities(len(self.targets))

        self.configs: list[ModelQConfig] = []
        self.encodings = np.zeros((0, len(self.cardinalities)), dtype=np.int64)
        self.bits = np.zeros(0)
        self.losses = np.full(0, np.nan)
        self.loss_round = np.zeros(0, dtype=np.int64)  # round whose model measured the loss
        self._keys: dict[bytes, int] = {}
        for k, mqc in enumerate(initial):
            encoding = mqc.encode(self.targets)  # checks the module names
            if encoding.tobytes() in self._keys:
                raise ValueError(
                    f"initial configurations {self._keys[encoding.tobytes()]} and {k} are identical"
                )
            self._add(mqc, encoding, round_index=0)
        if initial_losses is not None:
            self.losses[:] = self._checked_losses(initial_losses, len(initial), "initial_losses")
        self.training_ids = np.arange(len(initial))
        self.rounds: list[SearchRound] = []

    # --- state --------------------------------------------------------------------------
    @property
    def training_set(self) -> list[ModelQConfig]:
        return [self.configs[i] for i in self.training_ids]

    def _add(self, mqc: ModelQConfig, encoding: np.ndarray, round_index: int) -> int:
        pool_id = len(self.configs)
        self.configs.append(mqc)
        self._keys[encoding.tobytes()] = pool_id
        self.encodings = np.vstack([self.encodings, encoding[None, :]])
        self.bits = np.append(self.bits, mqc.avg_bits)
        self.losses = np.append(self.losses, np.nan)
        self.loss_round = np.append(self.loss_round, round_index)
        return pool_id

    def is_known(self, encoding: np.ndarray) -> bool:
        return np.asarray(encoding, dtype=np.int64).tobytes() in self._keys

    @staticmethod
    def _checked_losses(losses, expected: int, source: str) -> np.ndarray:
        array = np.asarray(losses, dtype=np.float64).reshape(-1)
        if len(array) != expected:
            raise ValueError(f"{source} returned {len(array)} losses for {expected} configurations")
        if not np.isfinite(array).all():
            raise ValueError(f"{source} returned a NaN or infinite loss")
        return array

    def _measure(self, ids: np.ndarray, round_index: int) -> None:
        if len(ids) == 0:
            return
        losses = self.evaluate_loss([self.configs[i] for i in ids])
        self.losses[ids] = self._checked_losses(losses, len(ids), "evaluate_loss")
        self.loss_round[ids] = round_index

    def state_dict(self) -> dict:
        """JSON-able state (pool, losses, training set, round logs) for resuming training."""
        return {
            "encodings": self.encodings.tolist(),
            "names": [c.name for c in self.configs],
            "losses": [None if np.isnan(v) else float(v) for v in self.losses],
            "loss_round": self.loss_round.tolist(),
            "training_ids": self.training_ids.tolist(),
            "rounds": [r.to_dict() for r in self.rounds],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()`` output; the pool is rebuilt from its encodings."""
        self.configs, self._keys = [], {}
        self.encodings = np.zeros((0, len(self.cardinalities)), dtype=np.int64)
        self.bits, self.losses = np.zeros(0), np.full(0, np.nan)
        self.loss_round = np.zeros(0, dtype=np.int64)
        for encoding, name, round_index in zip(
            state["encodings"], state["names"], state["loss_round"], strict=True
        ):
            encoding = np.asarray(encoding, dtype=np.int64)
            mqc = ModelQConfig.decode(
                encoding, self.targets, quantizer=self.quantizer, model=self.model_name, name=name
            )
            self._add(mqc, encoding, round_index)
        self.losses = np.array([np.nan if v is None else v for v in state["losses"]], dtype=float)
        self.training_ids = np.asarray(state["training_ids"], dtype=np.int64)
        self.rounds = [SearchRound(**r) for r in state["rounds"]]

    # --- proposals ----------------------------------------------------------------------
    def _draw_starts(self, rng: np.random.Generator, count: int) -> np.ndarray:
        base = self.training_ids[rng.permutation(len(self.training_ids))]
        base = np.resize(base, count)  # cycles through the set
        starts = self.encodings[base].copy()
        n_dims = starts.shape[1]
        n_perturb = max(1, round(self.config.perturb_fraction * n_dims))
        for row in starts:
            coords = rng.choice(n_dims, size=n_perturb, replace=False)
            row[coords] = rng.integers(0, self.cardinalities[coords])
        return starts

    def _propose_full(self, n: int, rng: np.random.Generator, seed: int, seconds: dict):
        cfg = self.config
        tick = time.perf_counter()
        acquisition = LogEHVIAcquisition(
            self.encodings,
            self.losses,
            self.targets,
            lengthscales=cfg.lengthscales,
            method=cfg.acquisition,
            mc_samples=cfg.mc_samples,
            ref_margin=cfg.ref_margin,
            batch_size=cfg.batch_size,
            seed=seed,
        )
        seconds["fit"] = time.perf_counter() - tick
        tick = time.perf_counter()
        n_starts = cfg.n_starts or 2 * n
        ends: dict[bytes, tuple[np.ndarray, int]] = {}
        rejected = 0
        for _ in range(cfg.max_start_batches):
            walk = coordinate_search(
                acquisition, self._draw_starts(rng, n_starts), self.cardinalities, cfg.max_steps
            )
            for point, steps in zip(walk.points, walk.steps, strict=True):
                key = point.tobytes()
                if key in self._keys or key in ends:
                    rejected += 1
                else:
                    ends[key] = (point, int(steps))
            if len(ends) >= n:
                break
        seconds["walk"] = time.perf_counter() - tick
        tick = time.perf_counter()
        # Greedy batch selection among the distinct end points: take the best, believe the
        # GP's prediction for it, re-score the rest. Without this, walkers that converge to
        # one region would fill the whole batch with near-copies.
        remaining = list(ends.values())
        chosen = []
        while remaining and len(chosen) < n:
            scores = acquisition(np.stack([point for point, _ in remaining]))
            best = int(np.argmax(scores))
            point, steps = remaining.pop(best)
            chosen.append((point, float(scores[best]), steps))
            if remaining and len(chosen) < n:
                acquisition.add_believer(point)
        seconds["select"] = time.perf_counter() - tick
        return chosen, rejected

    def _propose_random(self, n: int, rng: np.random.Generator):
        chosen: dict[bytes, tuple[np.ndarray, None, None]] = {}
        rejected = 0
        for _ in range(100 * n):
            if len(chosen) == n:
                break
            point = rng.integers(0, self.cardinalities)
            key = point.tobytes()
            if key in self._keys or key in chosen:
                rejected += 1
            else:
                chosen[key] = (point, None, None)
        return list(chosen.values()), rejected

    # --- a round ------------------------------------------------------------------------
    def run_round(self, n_candidates: int) -> SearchRound:
        """One round of the search; returns its record (also appended to ``self.rounds``)."""
        if n_candidates < 0:
            raise ValueError(f"n_candidates must be >= 0, got {n_candidates}")
        cfg = self.config
        index = len(self.rounds)
        seconds: dict[str, float] = {}
        start = time.perf_counter()
        previous_ids = self.training_ids.copy()
        record = dict(
            index=index,
            mode=cfg.mode,
            n_requested=n_candidates,
            candidates=[],
            n_pool_reevaluated=0,
            n_duplicates_rejected=0,
            seconds=seconds,
        )
        if cfg.mode == "frozen":
            return self._finish(record, previous_ids, start)

        tick = time.perf_counter()
        missing = np.isnan(self.losses)
        stale = missing | (self.loss_round < index) if cfg.reevaluate_pool else missing
        self._measure(np.flatnonzero(stale), index)
        record["n_pool_reevaluated"] = int(stale.sum())
        seconds["evaluate_pool"] = time.perf_counter() - tick

        tick = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, index])
        torch_seed = int(rng.integers(2**31))
        with torch.random.fork_rng(devices=[]), _torch_threads(cfg.num_threads):
            torch.manual_seed(torch_seed)  # GP fitting restarts draw from torch's global RNG
            if n_candidates == 0:
                proposals, rejected = [], 0
            elif cfg.mode == "full":
                proposals, rejected = self._propose_full(n_candidates, rng, torch_seed, seconds)
            else:
                proposals, rejected = self._propose_random(n_candidates, rng)
        record["n_duplicates_rejected"] = rejected
        seconds["propose"] = time.perf_counter() - tick

        tick = time.perf_counter()
        new_ids = []
        for k, (point, _, _) in enumerate(proposals):
            mqc = ModelQConfig.decode(
                point,
                self.targets,
                quantizer=self.quantizer,
                model=self.model_name,
                name=f"search-r{index}-{k}",
            )
            new_ids.append(self._add(mqc, point.astype(np.int64), index))
        self._measure(np.array(new_ids, dtype=np.int64), index)
        seconds["evaluate_candidates"] = time.perf_counter() - tick
        record["candidates"] = [
            CandidateRecord(
                id=pool_id,
                bits=float(self.bits[pool_id]),
                loss=float(self.losses[pool_id]),
                acquisition=value if value is None or np.isfinite(value) else None,
                steps=steps,
                encoding=_encoding_string(self.encodings[pool_id]),
            )
            for pool_id, (_, value, steps) in zip(new_ids, proposals, strict=True)
        ]

        self.training_ids = segmented_pareto_filter(
            self.bits, self.losses, cfg.n_segments, cfg.bit_range
        )
        return self._finish(record, previous_ids, start)

    def _finish(self, record: dict, previous_ids: np.ndarray, start: float) -> SearchRound:
        known = ~np.isnan(self.losses)
        hv = dict(hv_before=None, hv_after=None, hv_reference=None, hv_ideal=None)
        if known.all():
            points = np.stack([self.losses, self.bits], axis=1)
            ref, ideal = reference_point(points, self.config.ref_margin), points.min(axis=0)
            hv = dict(
                hv_before=hypervolume(points[previous_ids], ref, ideal),
                hv_after=hypervolume(points[self.training_ids], ref, ideal),
                hv_reference=ref.tolist(),
                hv_ideal=ideal.tolist(),
            )
        record["seconds"]["total"] = time.perf_counter() - start
        result = SearchRound(
            **record,
            kept_ids=self.training_ids.tolist(),
            kept_points=[
                (None if np.isnan(self.losses[i]) else float(self.losses[i]), float(self.bits[i]))
                for i in self.training_ids
            ],
            pool_size=len(self.configs),
            **hv,
        )
        self.rounds.append(result)
        return result
