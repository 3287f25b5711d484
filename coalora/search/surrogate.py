"""GP surrogate of the loss and the log-EHVI acquisition over integer configuration encodings.

Objectives (both minimised by the search): f1 = loss (modelled by a GP), f2 = average bits
(exact, closed form: a botorch ``GenericDeterministicModel``). botorch maximises, so the
acquisition sees the *negated, normalised* objectives

    y_loss = -(loss - loss_low) / loss_span,   y_bits = -(bits - bits_low) / bits_span,

with low/span the minimum/range over the pool the GP is fitted on, and the reference point at
``reference_point`` (max + 10% of the range) in that space, i.e. strictly worse than every
observation. Inputs are the length-5N field-index encodings scaled to [0, 1] per coordinate
(``index / (cardinality - 1)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# log(phi(z) + z Phi(z)) computed stably: botorch's LogExpectedImprovement helper (private
# name, stable across 0.1x; botorch is pinned).
from botorch.acquisition.analytic import _log_ei_helper
from botorch.acquisition.multi_objective.base import MultiObjectiveAnalyticAcquisitionFunction
from botorch.acquisition.multi_objective.logei import qLogExpectedHypervolumeImprovement
from botorch.fit import fit_gpytorch_mll
from botorch.models import ModelList, SingleTaskGP
from botorch.models.deterministic import GenericDeterministicModel
from botorch.models.model import Model
from botorch.models.transforms import Standardize
from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
from botorch.posteriors import GPyTorchPosterior
from botorch.sampling import SobolQMCNormalSampler
from botorch.sampling.index_sampler import IndexSampler
from botorch.sampling.list_sampler import ListSampler
from botorch.utils.multi_objective.box_decompositions.non_dominated import (
    FastNondominatedPartitioning,
)
from botorch.utils.safe_math import logdiffexp
from botorch.utils.transforms import t_batch_mode_transform
from gpytorch.constraints import GreaterThan
from gpytorch.distributions import MultivariateNormal
from gpytorch.kernels import Kernel, RBFKernel
from gpytorch.kernels.rbf_kernel import postprocess_rbf
from gpytorch.mlls import ExactMarginalLogLikelihood
from gpytorch.priors import LogNormalPrior
from linear_operator.operators import DiagLinearOperator
from linear_operator.utils.cholesky import psd_safe_cholesky

from ..quant.config import ALL_OPTIONS, FIELD_CHOICES, FIELDS
from ..quant.model_config import field_cardinalities
from ..quant.targets import QuantTarget
from .pareto import pareto_mask, reference_point

DTYPE = torch.float64  # GP fitting in float32 is unreliable (botorch's advice)
LENGTHSCALES = ("per_field", "shared", "per_coordinate")
ACQUISITIONS = ("analytic", "mc")


def normalise_encodings(encodings, cardinalities) -> torch.Tensor:
    """Integer encodings (..., D) -> floats in [0, 1]: ``index / (cardinality - 1)``."""
    encodings = np.asarray(encodings)
    return torch.as_tensor(encodings / (np.asarray(cardinalities) - 1), dtype=DTYPE)


class AverageBits:
    """Exact average bits of encodings, vectorised (NumPy indices or normalised torch inputs).

    Same formula as ``ModelQConfig.avg_bits``: the parameter-weighted mean over matrices of
    ``b + b0/B0 + bits(d1)/(B0*B1)``, read from a table of the 432 options' bits.
    """

    def __init__(self, targets: list[QuantTarget]):
        self.n_targets = len(targets)
        numel = torch.tensor([t.numel for t in targets], dtype=DTYPE)
        self.weights = numel / numel.sum()
        self.option_bits = torch.tensor([qc.bits for qc in ALL_OPTIONS], dtype=DTYPE)
        per_field = [len(FIELD_CHOICES[f]) for f in FIELDS]
        # ALL_OPTIONS is the product of the fields' choices: the option index is the
        # mixed-radix number of the field indices (last field fastest).
        self.strides = torch.tensor(
            [math.prod(per_field[k + 1 :]) for k in range(len(FIELDS))], dtype=torch.long
        )
        self.scale = torch.tensor([c - 1 for c in per_field], dtype=DTYPE)

    def _per_matrix(self, values: torch.Tensor) -> torch.Tensor:
        """(..., 5N) -> (..., N, 5)."""
        return values.reshape(*values.shape[:-1], self.n_targets, len(FIELDS))

    def _average(self, field_indices: torch.Tensor) -> torch.Tensor:
        """Field indices (..., N, 5) -> average bits (...)."""
        return self.option_bits[field_indices @ self.strides] @ self.weights

    def from_indices(self, encodings) -> np.ndarray:
        """Integer encodings (..., 5N) -> average bits (...)."""
        indices = torch.as_tensor(np.asarray(encodings), dtype=torch.long)
        return self._average(self._per_matrix(indices)).numpy()

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        """Normalised encodings (..., 5N) -> average bits (..., 1)."""
        indices = torch.round(self._per_matrix(X) * self.scale.to(X)).long()
        return self._average(indices).unsqueeze(-1)


class FieldRBFKernel(RBFKernel):
    """RBF over the 5N-coordinate encoding with one lengthscale per field (b, b0, d1, B0, B1),
    shared by all matrices: full ARD with the lengthscales tied per field, computed as one
    distance (a product of five per-field kernels gives the same values, ~10x slower to fit).
    """

    def __init__(self, n_targets: int, **kwargs):
        super().__init__(ard_num_dims=len(FIELDS), **kwargs)
        self.n_targets = n_targets
        # The input has 5N columns, not 5: disable gpytorch's "ard_num_dims == input width"
        # check; forward tiles the 5 lengthscales over the N matrices (matrix-major encoding).
        self.ard_num_dims = None

    def forward(self, x1, x2, diag=False, **params):
        lengthscale = self.lengthscale.repeat(*([1] * (self.lengthscale.dim() - 1)), self.n_targets)
        x1_, x2_ = x1.div(lengthscale), x2.div(lengthscale)
        return postprocess_rbf(self.covar_dist(x1_, x2_, square_dist=True, diag=diag, **params))


def make_kernel(n_targets: int, lengthscales: str = "per_field") -> Kernel:
    """RBF kernel over the 5N-coordinate encoding, with botorch's dimension-scaled prior.

    ``per_field`` (default): one lengthscale per field shared by all matrices
    (``FieldRBFKernel``): 5 hyper-parameters, quick to fit, and it learns that ``b`` matters
    far more than ``d1``. ``shared``: one lengthscale. ``per_coordinate``: full ARD (5N
    lengthscales; slow to fit at N = 210 and over-fitted by a pool of ~100 points).
    """
    dims = len(FIELDS) * n_targets
    # The prior's scale grows with sqrt(dims) in every variant: the squared distance is summed
    # over all 5N coordinates, however the lengthscales are tied.
    prior = LogNormalPrior(loc=math.sqrt(2) + 0.5 * math.log(dims), scale=math.sqrt(3))
    constraint = GreaterThan(2.5e-2, transform=None, initial_value=prior.mode)
    if lengthscales == "per_field":
        return FieldRBFKernel(n_targets, lengthscale_prior=prior, lengthscale_constraint=constraint)
    if lengthscales == "shared":
        return RBFKernel(lengthscale_prior=prior, lengthscale_constraint=constraint)
    if lengthscales == "per_coordinate":
        return get_covar_module_with_dim_scaled_prior(ard_num_dims=dims)
    raise ValueError(f"unknown lengthscales {lengthscales!r}; allowed values: {LENGTHSCALES}")


def fit_gp(train_X: torch.Tensor, train_Y: torch.Tensor, kernel: Kernel) -> SingleTaskGP:
    """SingleTaskGP with standardised outputs, hyper-parameters fitted by marginal likelihood."""
    gp = SingleTaskGP(train_X, train_Y, covar_module=kernel, outcome_transform=Standardize(m=1))
    fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
    gp.eval()
    return gp


class PointwiseGP(Model):
    """The marginal posterior of a fitted single-output ``SingleTaskGP``, one point per t-batch.

    Evaluating an acquisition at M separate points means M t-batches of q = 1. gpytorch then
    copies the training inputs into every t-batch and builds each joint train+test covariance:
    measured here, ~10 s for 2,048 points of dimension 1,050, and 16,000 points ran out of
    memory (23 GB). This wrapper computes
    the same marginals (mean, variance) from one M x n cross-covariance and a cached Cholesky
    factor; ``tests/test_search.py`` checks it against ``gp.posterior``.
    """

    def __init__(self, gp: SingleTaskGP):
        super().__init__()
        if gp.num_outputs != 1:
            raise ValueError("PointwiseGP wraps single-output GPs only")
        gp.eval()
        self.gp = gp
        with torch.no_grad():
            train_X = gp.train_inputs[0]
            noise = gp.likelihood.noise.expand(train_X.shape[0])
            covar = gp.covar_module(train_X).to_dense() + torch.diag(noise)
            self._train_X = train_X
            self._cholesky = psd_safe_cholesky(covar)
            residual = (gp.train_targets - gp.mean_module(train_X)).unsqueeze(-1)
            self._alpha = torch.cholesky_solve(residual, self._cholesky).squeeze(-1)

    @property
    def num_outputs(self) -> int:
        return 1

    @property
    def batch_shape(self) -> torch.Size:
        return torch.Size()

    def posterior(self, X, output_indices=None, observation_noise=False, posterior_transform=None):
        if X.shape[-2] != 1:
            raise ValueError(f"PointwiseGP gives marginals only (q = 1), got q = {X.shape[-2]}")
        if observation_noise is not False or posterior_transform is not None:
            raise ValueError("PointwiseGP supports neither observation_noise nor transforms")
        gp = self.gp
        with torch.no_grad():
            flat = X.reshape(-1, X.shape[-1])
            cross = gp.covar_module(flat, self._train_X).to_dense()
            mean = gp.mean_module(flat) + cross @ self._alpha
            root = torch.linalg.solve_triangular(self._cholesky, cross.T, upper=False)
            prior_var = gp.covar_module(flat, diag=True)
            var = (prior_var - (root * root).sum(0)).clamp_min(1e-12)
        shape = X.shape[:-1]
        mvn = MultivariateNormal(mean.reshape(shape), DiagLinearOperator(var.reshape(shape)))
        return gp.outcome_transform.untransform_posterior(GPyTorchPosterior(mvn))


class AnalyticLogEHVI(MultiObjectiveAnalyticAcquisitionFunction):
    """Exact log EHVI of single points (q = 1) for independent outputs, some deterministic.

    With the non-dominated region split into boxes [l_k, u_k) (botorch's partitioning,
    maximisation), the improvement of an outcome y is sum_k prod_j (min(y_j, u_kj) - l_kj)_+,
    and for independent outputs its expectation factorises per box and output:

    * Gaussian output N(mu, s^2): E[(min(Y, u) - l)_+] = s (h((mu - l)/s) - h((mu - u)/s)),
      h(z) = phi(z) + z Phi(z), the expected-improvement function (its log computed stably);
    * deterministic output (variance 0, e.g. the exact bits): (min(y, u) - l)_+.

    This is what ``qLogExpectedHypervolumeImprovement`` estimates by quasi-MC for q = 1, with
    no sampling noise and ~100x less work per point (``tests/test_search.py`` compares them).
    """

    def __init__(self, model: Model, ref_point: torch.Tensor, partitioning):
        super().__init__(model=model)
        self.register_buffer("ref_point", torch.as_tensor(ref_point))
        lower, upper = partitioning.get_hypercell_bounds()
        self.register_buffer("cell_lower_bounds", lower)
        # Upper bounds of the outer boxes are +inf; a huge finite value keeps (mu - u)/s finite.
        self.register_buffer("cell_upper_bounds", upper.clamp_max(1e10))

    @t_batch_mode_transform(expected_q=1)
    def forward(self, X: torch.Tensor) -> torch.Tensor:
        posterior = self.model.posterior(X)
        mean = posterior.mean  # batch x 1 x m (broadcasts against the cells: n_cells x m)
        sigma = posterior.variance.clamp_min(0).sqrt()
        lower, upper = self.cell_lower_bounds, self.cell_upper_bounds
        deterministic = sigma <= 0
        safe_sigma = torch.where(deterministic, torch.ones_like(sigma), sigma)
        log_gaussian = safe_sigma.log() + logdiffexp(
            _log_ei_helper((mean - upper) / safe_sigma), _log_ei_helper((mean - lower) / safe_sigma)
        )
        log_exact = (torch.minimum(mean, upper) - lower).clamp_min(0).log()
        log_factors = torch.where(deterministic, log_exact, log_gaussian)
        return torch.logsumexp(log_factors.sum(dim=-1), dim=-1)


@dataclass(frozen=True)
class ObjectiveFrame:
    """Affine map from raw (loss, bits) to the normalised minimisation space of one round."""

    loss_low: float
    loss_span: float
    bits_low: float
    bits_span: float

    @classmethod
    def from_points(cls, losses, bits) -> ObjectiveFrame:
        def low_span(values):
            values = np.asarray(values, dtype=np.float64)
            span = float(values.max() - values.min())
            return float(values.min()), span if span > 0 else 1.0

        return cls(*low_span(losses), *low_span(bits))

    def normalise(self, losses, bits) -> np.ndarray:
        """(n, 2) array of normalised (loss, bits), both minimised."""
        return np.stack(
            [
                (np.asarray(losses, dtype=np.float64) - self.loss_low) / self.loss_span,
                (np.asarray(bits, dtype=np.float64) - self.bits_low) / self.bits_span,
            ],
            axis=1,
        )


class LogEHVIAcquisition:
    """log EHVI of single configurations over the pool's front, callable on integer encodings.

    Built once per round from the evaluated pool: fits the loss GP, pairs it with the exact
    bits model in a ``ModelList`` and partitions the non-dominated space of the pool's front.
    ``method="analytic"`` (default) is the exact ``AnalyticLogEHVI``; ``"mc"`` is botorch's
    ``qLogExpectedHypervolumeImprovement`` with seeded quasi-MC base samples (shared by every
    t-batch). Either way a configuration's value does not depend on which batch it is
    evaluated in; the coordinate search relies on this for its differences.
    """

    def __init__(
        self,
        encodings: np.ndarray,
        losses,
        targets: list[QuantTarget],
        *,
        lengthscales: str = "per_field",
        method: str = "analytic",
        mc_samples: int = 128,
        ref_margin: float = 0.1,
        batch_size: int = 1024,
        seed: int = 0,
    ):
        encodings = np.asarray(encodings)
        losses = np.asarray(losses, dtype=np.float64)
        if encodings.ndim != 2 or len(encodings) != len(losses) or len(losses) == 0:
            raise ValueError(
                f"need a non-empty (n, 5N) encoding array and n losses, got {encodings.shape} "
                f"and {losses.shape}"
            )
        if not np.isfinite(losses).all():
            raise ValueError("losses given to the acquisition contain NaN or infinite values")
        if method not in ACQUISITIONS:
            raise ValueError(
                f"unknown acquisition method {method!r}; allowed values: {ACQUISITIONS}"
            )
        self.method, self.mc_samples, self.seed = method, mc_samples, seed
        self.cardinalities = field_cardinalities(len(targets))
        self.bits_model = AverageBits(targets)
        self.batch_size = batch_size
        bits = self.bits_model.from_indices(encodings)
        self.frame = ObjectiveFrame.from_points(losses, bits)
        self.observed = self.frame.normalise(losses, bits)  # minimisation space
        self.ref_point = reference_point(self.observed, margin=ref_margin)

        train_X = normalise_encodings(encodings, self.cardinalities)
        train_Y = -torch.as_tensor(self.observed[:, :1], dtype=DTYPE)
        self.gp = fit_gp(train_X, train_Y, make_kernel(len(targets), lengthscales))
        self._build()

    def _build(self) -> None:
        """(Re)build the acquisition from ``self.gp`` and the front of ``self.observed``."""
        frame, bits_model = self.frame, self.bits_model

        def negated_normalised_bits(X: torch.Tensor) -> torch.Tensor:
            return -(bits_model(X) - frame.bits_low) / frame.bits_span

        model = ModelList(
            PointwiseGP(self.gp), GenericDeterministicModel(negated_normalised_bits, num_outputs=1)
        )
        front = torch.as_tensor(-self.observed[pareto_mask(self.observed)], dtype=DTYPE)
        ref = torch.as_tensor(-self.ref_point, dtype=DTYPE)
        partitioning = FastNondominatedPartitioning(ref_point=ref, Y=front)
        if self.method == "analytic":
            self.acqf = AnalyticLogEHVI(model, ref, partitioning)
        else:
            sample_shape = torch.Size([self.mc_samples])
            sampler = ListSampler(
                SobolQMCNormalSampler(sample_shape, seed=self.seed),
                IndexSampler(sample_shape, seed=self.seed),
            )
            self.acqf = qLogExpectedHypervolumeImprovement(
                model=model, ref_point=ref, partitioning=partitioning, sampler=sampler
            )

    def add_believer(self, encoding) -> None:
        """Pretend ``encoding`` was evaluated at the GP's predicted loss ("Kriging believer").

        The GP is conditioned on that value (hyper-parameters kept) and the point joins the
        front, so configurations chosen afterwards are valued for what they add beyond it.
        """
        X = normalise_encodings(np.asarray(encoding)[None, :], self.cardinalities)
        with torch.no_grad():
            predicted = self.gp.posterior(X).mean  # (1, 1), in the GP's output space
            self.gp = self.gp.condition_on_observations(X, predicted)
        bits = float(self.bits_model(X).squeeze())
        believed = [
            [-float(predicted.squeeze()), (bits - self.frame.bits_low) / self.frame.bits_span]
        ]
        self.observed = np.concatenate([self.observed, believed])
        self._build()

    def __call__(self, encodings) -> np.ndarray:
        """Acquisition values (M,) of integer encodings (M, 5N), in chunks of ``batch_size``."""
        encodings = np.asarray(encodings)
        values = []
        with torch.no_grad():
            for start in range(0, len(encodings), self.batch_size):
                X = normalise_encodings(
                    encodings[start : start + self.batch_size], self.cardinalities
                )
                values.append(self.acqf(X.unsqueeze(-2)).numpy())
        return np.concatenate(values) if values else np.zeros(0)
