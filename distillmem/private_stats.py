"""The Gaussian mechanism on the sufficient statistics of ridge regression (docs/math.md §8.4).

Samples are rows. Every feature row phi(x) (p,) is clipped to norm <= B and
every target row t (k,) must have norm <= 1 (one-hot labels do). The released
statistics are

    G~ = Phi^T Phi + E        E (p, p) symmetric, its upper triangle i.i.d. N(0, sigma^2)
    R~ = Phi^T T + N          N (p, k) i.i.d. N(0, sigma^2)
    n~ = n + e                e ~ N(0, sigma^2)

Adding or removing one sample moves the upper triangle of G by at most B^2,
R by at most B and n by 1 (in L2), so the joint sensitivity is
Delta = sqrt(B^4 + B^2 + 1), and sigma is calibrated to Delta by the analytic
Gaussian mechanism (any epsilon > 0) or by the classical bound (epsilon < 1).
Everything computed from (G~, R~, n~) afterwards, such as the points of a
moment memory, is post-processing and costs no privacy.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import numpy as np
import torch
from scipy.special import log_ndtr, ndtr

from ._stats import checked_features, iter_array_chunks
from ._validation import as_samples, as_targets, check_int, check_real, resolve_device
from .features import FeatureMap
from .memory import MomentMemory
from .privacy import clip_rows

CALIBRATIONS = ("analytic", "classical")
#: What the released statistics guarantee, and what they do not; reported with every result.
GUARANTEE = (
    "(epsilon, delta)-DP of the released (G~, R~, n~) and of everything computed from them (post-processing: "
    "the PSD projection, the memory's points, any ridge head at any lambda), for neighbouring data sets that "
    "differ by adding or removing one sample, with feature rows clipped to norm <= norm_bound and target rows "
    "of norm <= 1. Not covered: the feature map and the norm bound (assumed public, chosen without the data), "
    "the pseudo-random generator's quality and floating-point side channels of Gaussian sampling."
)
# Target rows may exceed norm 1 by rounding only.
_TARGET_NORM_TOL = 1e-9


def statistics_sensitivity(norm_bound: float) -> float:
    """Delta = sqrt(B^4 + B^2 + 1): the L2 change of (upper triangle of G, R, n) when one sample is added or removed."""
    bound = check_real(norm_bound, "norm_bound", positive=True)
    return math.sqrt(bound**4 + bound**2 + 1.0)


def gaussian_delta(sigma: float, sensitivity: float, epsilon: float) -> float:
    """The smallest delta for which N(0, sigma^2) noise on a query of L2 sensitivity Delta is (epsilon, delta)-DP.

    Balle & Wang (2018), Theorem 8: delta = Phi(Delta/(2 sigma) - epsilon sigma/Delta)
    - e^epsilon Phi(-Delta/(2 sigma) - epsilon sigma/Delta), Phi the standard normal CDF.
    """
    a, b = sensitivity / (2.0 * sigma), epsilon * sigma / sensitivity
    # e^epsilon Phi(.) in log space: the product overflows for large epsilon before it is small.
    return float(ndtr(a - b) - np.exp(epsilon + log_ndtr(-a - b)))


def gaussian_sigma(sensitivity: float, epsilon: float, delta: float, calibration: str = "analytic") -> float:
    """The noise standard deviation that makes a query of L2 sensitivity Delta (epsilon, delta)-DP.

    ``"classical"``: sigma = Delta sqrt(2 ln(1.25/delta)) / epsilon (Dwork & Roth,
    Theorem A.1), valid only for 0 < epsilon < 1 (refused otherwise).
    ``"analytic"``: the smallest sigma with ``gaussian_delta(sigma) <= delta``
    (Balle & Wang 2018), valid for every epsilon > 0 and never larger than the
    classical one; found by bisection to a relative 1e-12, rounded up.
    """
    sensitivity = check_real(sensitivity, "sensitivity", positive=True)
    epsilon, delta = _check_epsilon_delta(epsilon, delta)
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}")
    if calibration == "classical":
        if not epsilon < 1:
            raise ValueError(
                f"epsilon={epsilon!r}: the classical Gaussian mechanism sigma = Delta sqrt(2 ln(1.25/delta)) / epsilon "
                "is proven only for epsilon < 1; use calibration='analytic' for larger epsilon"
            )
        return sensitivity * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon
    low, high = 1e-3, 1.0  # in units of Delta; delta(sigma) decreases in sigma
    while gaussian_delta(high, 1.0, epsilon) > delta:
        low, high = high, 2.0 * high
    while gaussian_delta(low, 1.0, epsilon) <= delta:
        low /= 2.0
    while high - low > 1e-12 * high:
        middle = 0.5 * (low + high)
        low, high = (low, middle) if gaussian_delta(middle, 1.0, epsilon) <= delta else (middle, high)
    return high * sensitivity


def statistics_points(gram: Any, cross: Any, energy: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (r, p) and targets (r, k) whose moments are the PSD part of ``gram`` and ``cross``, float64.

    ``gram`` (p, p) symmetric, possibly indefinite (noisy); ``cross`` (p, k).
    With gram = V diag(e) V^T (e descending), direction i gives the point
    sqrt(e_i) v_i^T with target v_i^T R / sqrt(e_i). Directions with e_i <= 0
    are dropped (the projection onto the PSD cone), and so are the trailing
    ones beyond the longest prefix whose target energy sum_i ||v_i^T R||^2 / e_i
    stays <= ``energy``: exact statistics of n one-hot samples never exceed
    n, while a noisy near-zero e_i can make it arbitrarily large.
    """
    g = torch.as_tensor(gram, dtype=torch.float64)
    r = torch.as_tensor(cross, dtype=torch.float64)
    if g.ndim != 2 or g.shape[0] != g.shape[1] or r.ndim != 2 or r.shape[0] != g.shape[0]:
        raise ValueError(f"gram must be (p, p) and cross (p, k); got {tuple(g.shape)} and {tuple(r.shape)}")
    energy = check_real(energy, "energy", minimum=0)
    eig, vec = torch.linalg.eigh(0.5 * (g + g.T))
    eig, vec = eig.flip(0), vec.flip(1)
    positive = int((eig > g.shape[0] * torch.finfo(torch.float64).eps * float(eig.abs().max().clamp_min(1e-300))).sum())
    eig, coef = eig[:positive], vec[:, :positive].T @ r
    # Contributions are >= 0, so the cumulative energy rises and the kept rows are a prefix.
    keep = int(((coef.square().sum(dim=1) / eig).cumsum(0) <= energy).sum())
    root = eig[:keep].sqrt()
    return root[:, None] * vec[:, :keep].T, coef[:keep] / root[:, None]


class PrivateStatistics:
    """(epsilon, delta)-DP ridge statistics (G~, R~, n~) of a data set, by the Gaussian mechanism.

    Parameters
    ----------
    feature_map : FeatureMap
        phi, fixed and public (chosen without the data).
    n_classes : int
        k, the target columns.
    epsilon : float
        > 0; below 1 for ``calibration="classical"``.
    delta : float
        In (0, 1).
    norm_bound : float
        B > 0: every feature row is scaled to norm <= B before it enters the sums.
    calibration : {"analytic", "classical"}
        See :func:`gaussian_sigma`.
    seed : int, optional
        Seeds the noise, for tests only. None (the default) draws the seed from
        the operating system: whoever knows the seed can subtract the noise.
    chunk_size : int
        Rows whose features are computed at once.
    device : str or torch.device, optional
        Where features are computed; the statistics are kept on the CPU.

    Attributes
    ----------
    gram_ : (p, p) float64, symmetric, possibly indefinite
    cross_ : (p, k) float64
    count_ : float, the noisy sample count n~
    sigma_, sensitivity_ : float, the noise standard deviation and Delta
    n_clipped_ : int, feature rows that were scaled down to B (not released)
    n_features_in_ : int, d
    """

    def __init__(
        self,
        feature_map: FeatureMap,
        n_classes: int,
        *,
        epsilon: float,
        delta: float = 1e-5,
        norm_bound: float,
        calibration: str = "analytic",
        seed: int | None = None,
        chunk_size: int = 8192,
        device: str | torch.device | None = None,
    ) -> None:
        self.feature_map = feature_map
        self.n_classes = n_classes
        self.epsilon = epsilon
        self.delta = delta
        self.norm_bound = norm_bound
        self.calibration = calibration
        self.seed = seed
        self.chunk_size = chunk_size
        self.device = device

    def fit(self, x: Any, y: Any) -> "PrivateStatistics":
        """Release noisy statistics of x (n, d) or (n, C, H, W) with labels y (n,) or targets (n, k) of row norm <= 1."""
        if not isinstance(self.feature_map, FeatureMap):
            raise TypeError(f"feature_map must be a distillmem FeatureMap, got {type(self.feature_map).__name__}")
        k = check_int(self.n_classes, "n_classes", minimum=1)
        bound = check_real(self.norm_bound, "norm_bound", positive=True)
        sigma = gaussian_sigma(statistics_sensitivity(bound), self.epsilon, self.delta, self.calibration)
        seed = secrets.randbits(63) if self.seed is None else check_int(self.seed, "seed", minimum=0)
        device = resolve_device(self.device)
        fmap = self.feature_map.on_device(device)
        xs = as_samples(x)
        targets, _ = as_targets(y, xs.shape[0], k)
        worst = float(targets.norm(dim=1).max()) if targets.shape[0] else 0.0
        if worst > 1 + _TARGET_NORM_TOL:
            raise ValueError(f"target rows must have norm <= 1 for the stated sensitivity; the largest has norm {worst:.6g}")
        gram = cross = None
        clipped = 0
        for chunk, t in iter_array_chunks(xs, targets, check_int(self.chunk_size, "chunk_size", minimum=1), device):
            f = checked_features(fmap, chunk.to(torch.float64))
            f, scaled = clip_rows(f, bound)
            clipped += scaled
            gram = f.T @ f if gram is None else gram + f.T @ f
            cross = f.T @ t if cross is None else cross + f.T @ t
        if gram is None:
            raise ValueError("the data is empty: x has no rows")
        gen = torch.Generator().manual_seed(seed)
        p = gram.shape[0]
        upper = torch.triu(torch.randn(p, p, generator=gen, dtype=torch.float64), diagonal=0)
        noise = sigma * (upper + torch.triu(upper, 1).T)
        self.gram_ = gram.cpu() + noise
        self.cross_ = cross.cpu() + sigma * torch.randn(p, k, generator=gen, dtype=torch.float64)
        self.count_ = float(xs.shape[0] + sigma * torch.randn(1, generator=gen, dtype=torch.float64))
        self.sigma_, self.sensitivity_, self.n_clipped_, self.n_features_in_ = sigma, statistics_sensitivity(bound), clipped, xs.shape[1]
        return self

    @property
    def released_count(self) -> int:
        """The noisy count rounded to an integer >= 1 (post-processing of n~)."""
        self._check_fitted()
        return max(1, round(self.count_))

    def upper_triangle(self) -> torch.Tensor:
        """G~'s upper triangle, diagonal included, row by row: (p (p + 1) / 2,)."""
        self._check_fitted()
        rows, cols = torch.triu_indices(*self.gram_.shape)
        return self.gram_[rows, cols]

    def to_memory(self, **params: Any) -> MomentMemory:
        """A MomentMemory of :func:`statistics_points` of (G~, R~) with energy budget and ``n_seen_`` the released count.

        ``params`` are MomentMemory's keywords (e.g. ``max_points``); a budget is
        applied to the points, which is post-processing too.
        """
        self._check_fitted()
        features, targets = statistics_points(self.gram_, self.cross_, self.released_count)
        if features.shape[0] == 0:
            raise ValueError(
                f"the noisy Gram has no direction left after the PSD projection and the energy budget "
                f"(sigma = {self.sigma_:.4g}): the noise swamps the data; raise epsilon or use more samples"
            )
        return MomentMemory.from_features(
            self.feature_map, int(self.n_classes), features, targets, n_seen=self.released_count, **params
        )

    def report(self) -> dict[str, Any]:
        """epsilon, delta, norm_bound, calibration, sensitivity, sigma and the guarantee, as JSON-ready values."""
        self._check_fitted()
        return privacy_report(self.epsilon, self.delta, self.norm_bound, self.calibration)

    def _check_fitted(self) -> None:
        if not hasattr(self, "gram_"):
            raise RuntimeError("this PrivateStatistics is not fitted: call fit(x, y) first")


def privacy_report(epsilon: float, delta: float, norm_bound: float, calibration: str = "analytic") -> dict[str, Any]:
    """What a release with these parameters guarantees: the parameters, Delta, sigma and the scope in words."""
    sensitivity = statistics_sensitivity(norm_bound)
    return {
        "mechanism": "gaussian mechanism on the ridge statistics (upper triangle of G, R, n)",
        "calibration": calibration,
        "epsilon": float(epsilon),
        "delta": float(delta),
        "norm_bound": float(norm_bound),
        "neighbouring": "add or remove one sample",
        "sensitivity": sensitivity,
        "sigma": gaussian_sigma(sensitivity, epsilon, delta, calibration),
        "covers": GUARANTEE,
    }


def _check_epsilon_delta(epsilon: Any, delta: Any) -> tuple[float, float]:
    epsilon = check_real(epsilon, "epsilon", positive=True)
    delta = check_real(delta, "delta")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    return epsilon, delta
