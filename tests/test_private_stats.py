"""The Gaussian mechanism on ridge statistics: calibration, sensitivity, the noise actually drawn, clipping,
post-processing into a moment memory, and bad parameters."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import _problem
from scipy.stats import chi2, norm

from distillmem import KRR
from distillmem.features import Identity
from distillmem.private_stats import (
    PrivateStatistics,
    gaussian_delta,
    gaussian_sigma,
    privacy_report,
    statistics_points,
    statistics_sensitivity,
)

DELTA = 1e-5
#: Two-sided chi-square bounds at this tail probability: a correct mechanism fails one in 5e5 runs.
TAIL = 1e-6


def _clipped(x: torch.Tensor, bound: float) -> torch.Tensor:
    norms = x.norm(dim=1, keepdim=True)
    return torch.where(norms > bound, x * bound / norms, x)


def _exact(x: torch.Tensor, y: torch.Tensor, bound: float, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    f = _clipped(x, bound)
    return f.T @ f, f.T @ torch.nn.functional.one_hot(y, k).to(torch.float64)


def _assert_std(noise: torch.Tensor, sigma: float) -> None:
    """Zero-mean i.i.d. N(0, sigma^2) entries: sum of squares / sigma^2 within chi-square(N) bounds."""
    n = noise.numel()
    statistic = float(noise.square().sum()) / sigma**2
    assert chi2.ppf(TAIL, n) < statistic < chi2.ppf(1 - TAIL, n), (statistic, n)


@pytest.fixture(scope="module")
def data():
    x, y = _problem(n=400, d=12, k=3)  # row norms about 4-7, so B = 3 clips most rows
    return x, y


# -- calibration ----------------------------------------------------------------------------


@pytest.mark.parametrize("epsilon", [0.1, 0.5, 0.9])
def test_classical_sigma_is_the_textbook_formula(epsilon):
    assert gaussian_sigma(2.5, epsilon, DELTA, "classical") == pytest.approx(
        2.5 * math.sqrt(2 * math.log(1.25 / DELTA)) / epsilon, rel=1e-14
    )


@pytest.mark.parametrize("epsilon", [1.0, 2.0, 8.0])
def test_classical_sigma_refuses_epsilon_outside_its_proof(epsilon):
    with pytest.raises(ValueError, match="only for epsilon < 1"):
        gaussian_sigma(1.0, epsilon, DELTA, "classical")


@pytest.mark.parametrize("epsilon", [0.1, 0.5, 1.0, 2.0, 8.0, 50.0])
def test_analytic_sigma_meets_delta_exactly_and_is_the_smallest(epsilon):
    sensitivity = 3.0
    sigma = gaussian_sigma(sensitivity, epsilon, DELTA)
    # The privacy profile written out with the normal CDF directly (independent of the log-space code).
    a, b = sensitivity / (2 * sigma), epsilon * sigma / sensitivity
    if epsilon < 20:
        assert norm.cdf(a - b) - math.exp(epsilon) * norm.cdf(-a - b) == pytest.approx(DELTA, rel=1e-6)
    assert gaussian_delta(sigma, sensitivity, epsilon) <= DELTA
    assert gaussian_delta(0.999 * sigma, sensitivity, epsilon) > DELTA
    if epsilon < 1:
        assert sigma < gaussian_sigma(sensitivity, epsilon, DELTA, "classical")


def test_sensitivity_is_attained_by_one_added_sample():
    bound, k = 2.0, 3
    assert statistics_sensitivity(bound) == pytest.approx(math.sqrt(bound**4 + bound**2 + 1), rel=1e-15)
    # An axis-aligned feature row of norm B moves (upper triangle of G, R, n) by exactly Delta; others by less.
    gen = torch.Generator().manual_seed(0)
    for phi in [bound * torch.eye(5, dtype=torch.float64)[2], *(torch.randn(5, generator=gen, dtype=torch.float64) for _ in range(20))]:
        phi = phi * min(1.0, bound / float(phi.norm()))
        t = torch.nn.functional.one_hot(torch.tensor(1), k).to(torch.float64)
        rows, cols = torch.triu_indices(5, 5)
        change = torch.cat([torch.outer(phi, phi)[rows, cols], torch.outer(phi, t).flatten(), torch.ones(1, dtype=torch.float64)])
        assert float(change.norm()) <= statistics_sensitivity(bound) * (1 + 1e-12)
        if float(phi.abs().max()) == pytest.approx(bound):
            assert float(change.norm()) == pytest.approx(statistics_sensitivity(bound), rel=1e-12)


# -- the mechanism --------------------------------------------------------------------------


def test_sigma_matches_the_hand_formula_and_the_report(data):
    x, y = data
    stats = PrivateStatistics(Identity(), 3, epsilon=0.5, delta=DELTA, norm_bound=3.0, calibration="classical", seed=0).fit(x, y)
    hand = math.sqrt(3.0**4 + 3.0**2 + 1) * math.sqrt(2 * math.log(1.25 / DELTA)) / 0.5
    assert stats.sigma_ == pytest.approx(hand, rel=1e-12)
    report = privacy_report(0.5, DELTA, 3.0, "classical")
    assert report["sigma"] == pytest.approx(hand, rel=1e-12)
    assert (report["epsilon"], report["delta"], report["norm_bound"]) == (0.5, DELTA, 3.0)
    assert "post-processing" in report["covers"] and report["neighbouring"] == "add or remove one sample"


def test_noise_is_there_with_the_stated_scale(data):
    x, y = data
    stats = PrivateStatistics(Identity(), 3, epsilon=1.0, delta=DELTA, norm_bound=3.0, seed=7).fit(x, y)
    gram, cross = _exact(x, y, 3.0, 3)
    noise = stats.gram_ - gram
    assert torch.equal(stats.gram_, stats.gram_.T)  # the upper triangle is mirrored, not noised twice
    rows, cols = torch.triu_indices(12, 12)
    _assert_std(noise[rows, cols], stats.sigma_)
    _assert_std(stats.cross_ - cross, stats.sigma_)
    assert stats.upper_triangle().shape == (78,) and torch.equal(stats.upper_triangle(), stats.gram_[rows, cols])
    # The count is noised too, with the same sigma: ~N(400, sigma^2).
    assert abs(stats.count_ - 400) < 6 * stats.sigma_ and stats.count_ != 400


def test_rows_above_the_bound_are_clipped_and_rows_inside_are_not(data):
    x, y = data
    norms = x.norm(dim=1)
    bound = float(norms.median())
    stats = PrivateStatistics(Identity(), 3, epsilon=1e8, norm_bound=bound, seed=0).fit(x, y)
    assert stats.n_clipped_ == int((norms > bound).sum()) > 0
    gram, cross = _exact(x, y, bound, 3)
    assert torch.allclose(stats.gram_, gram, rtol=0, atol=20 * stats.sigma_)
    assert torch.allclose(stats.cross_, cross, rtol=0, atol=20 * stats.sigma_)
    unclipped = x.T @ x
    assert float((stats.gram_ - unclipped).abs().max()) > 1.0  # the clipped sums are far from the raw ones
    small = x / (2 * float(norms.max()))  # every row inside B = 1
    inside = PrivateStatistics(Identity(), 3, epsilon=1e8, norm_bound=1.0, seed=0).fit(small, y)
    assert inside.n_clipped_ == 0
    assert torch.allclose(inside.gram_, small.T @ small, rtol=0, atol=20 * inside.sigma_)


def test_large_epsilon_gives_the_non_private_head_of_the_clipped_data(data):
    x, y = data
    reference = KRR(Identity(), reg=1.0).fit(_clipped(x, 3.0), y).weights_
    errors = []
    for epsilon in (1.0, 1e3, 1e6):
        memory = PrivateStatistics(Identity(), 3, epsilon=epsilon, norm_bound=3.0, seed=2).fit(x, y).to_memory()
        head = memory.fit_krr(1.0).weights_
        errors.append(float((head - reference).norm() / reference.norm()))
    # sigma falls like 1/sqrt(epsilon) for large epsilon (analytic calibration): 0.23 at 1e3, 0.0068 at 1e6.
    assert errors[2] < 2e-3 and errors[1] < 0.05 and errors[0] > 0.1 > errors[1] > errors[2]


def test_os_seed_by_default_and_a_seed_reproduces(data):
    x, y = data
    make = lambda seed: PrivateStatistics(Identity(), 3, epsilon=1.0, norm_bound=3.0, seed=seed).fit(x, y)  # noqa: E731
    assert torch.equal(make(3).gram_, make(3).gram_)
    assert not torch.equal(make(None).gram_, make(None).gram_)


# -- post-processing into points --------------------------------------------------------------


def test_points_of_exact_statistics_reproduce_them(data):
    x, y = data
    gram, cross = _exact(x, y, 3.0, 3)
    features, targets = statistics_points(gram, cross, energy=400)
    assert torch.allclose(features.T @ features, gram, rtol=0, atol=1e-10 * float(gram.norm()))
    assert torch.allclose(features.T @ targets, cross, rtol=0, atol=1e-10 * float(cross.norm()))
    assert float(targets.square().sum()) <= 400


def test_points_of_an_indefinite_gram_keep_its_psd_part_within_the_energy(data):
    x, y = data
    stats = PrivateStatistics(Identity(), 3, epsilon=0.3, norm_bound=3.0, seed=5).fit(x, y)
    eig, vec = torch.linalg.eigh(stats.gram_)
    assert float(eig.min()) < 0  # the noise made it indefinite
    features, targets = statistics_points(stats.gram_, stats.cross_, energy=stats.released_count)
    kept = features.shape[0]
    assert 0 < kept <= int((eig > 0).sum())
    assert float(targets.square().sum()) <= stats.released_count
    # The points span the top `kept` eigen-directions with their eigenvalues: a truncated PSD projection.
    top = vec[:, -kept:]
    projection = top @ torch.diag(eig[-kept:]) @ top.T
    assert torch.allclose(features.T @ features, projection, rtol=0, atol=1e-9 * float(projection.norm()))
    assert torch.allclose(features.T @ targets, top @ top.T @ stats.cross_, rtol=0, atol=1e-9 * float(stats.cross_.norm()))
    memory = stats.to_memory(max_points=4)
    assert memory.n_points <= 4 and memory.n_seen_ == stats.released_count


# -- bad parameters ---------------------------------------------------------------------------


def test_bad_parameters_are_named(data):
    x, y = data
    ok = dict(epsilon=1.0, delta=DELTA, norm_bound=3.0)
    for key, value, match in [
        ("epsilon", 0.0, "epsilon must be > 0"),
        ("epsilon", -1.0, "epsilon must be > 0"),
        ("epsilon", float("nan"), "epsilon must be a finite number"),
        ("delta", 0.0, r"delta must be in \(0, 1\)"),
        ("delta", 1.0, r"delta must be in \(0, 1\)"),
        ("norm_bound", 0.0, "norm_bound must be > 0"),
        ("norm_bound", -2.0, "norm_bound must be > 0"),
        ("calibration", "laplace", "calibration must be one of"),
    ]:
        with pytest.raises(ValueError, match=match):
            PrivateStatistics(Identity(), 3, **{**ok, key: value}).fit(x, y)
    with pytest.raises(ValueError, match="only for epsilon < 1"):
        PrivateStatistics(Identity(), 3, **{**ok, "epsilon": 2.0}, calibration="classical").fit(x, y)
    with pytest.raises(ValueError, match="target rows must have norm <= 1"):
        PrivateStatistics(Identity(), 3, **ok).fit(x, 2.0 * torch.nn.functional.one_hot(y, 3).to(torch.float64))
    with pytest.raises(RuntimeError, match="not fitted"):
        PrivateStatistics(Identity(), 3, **ok).to_memory()
