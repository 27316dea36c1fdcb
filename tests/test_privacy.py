"""Gaussian-mechanism distillation (Theorem 6.2): exactness, noise scale, assumptions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import _problem

from distillmem import DistilledSet, distill_private
from distillmem.privacy import NOISE_CONSTANT, clip_rows, gaussian_noise_scale, privacy_row_norms

EPS, DELTA = 0.5, 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


@pytest.fixture(scope="module")
def data():
    x, y = _problem(n=301, d=20, k=4)  # classes of 76, 75, 75, 75 points
    return x, y


def _clipped_lrr(x: torch.Tensor, y: torch.Tensor, bound: float) -> tuple[torch.Tensor, torch.Tensor]:
    norms = x.norm(dim=1, keepdim=True)
    clipped = torch.where(norms > bound, x * bound / norms, x)
    onehot = torch.nn.functional.one_hot(y, 4).to(torch.float64)
    return clipped, (torch.linalg.pinv(clipped) @ onehot).T


@pytest.mark.parametrize("ipc", [2, 5])
def test_distilled_set_is_exact_for_the_clipped_data(data, ipc):
    x, y = data
    bound = float(x.norm(dim=1).median())  # about half the rows get clipped
    distilled = distill_private(x, y, ipc=ipc, epsilon=EPS, delta=DELTA, norm_bound=bound, seed=1)
    _, w = _clipped_lrr(x, y, bound)
    assert len(distilled) == 4 * ipc and distilled.reg == 0.0
    assert distilled.recovery_error < 1e-9
    assert _rel(distilled.fit_krr().weights_, w) < 1e-9
    # Independent refit: min-norm least squares on the released points.
    assert _rel((torch.linalg.pinv(distilled.x) @ distilled.y).T, w) < 1e-9


def test_noise_scale_matches_a_hand_computation(data):
    x, y = data
    bound, ipc = 3.0, 4
    distilled = distill_private(x, y, ipc=ipc, epsilon=EPS, delta=DELTA, norm_bound=bound)
    clipped, _ = _clipped_lrr(x, y, bound)
    sigma_min = float(np.linalg.svd(clipped.numpy(), compute_uv=False)[-1])
    sigma_0 = 0.99 * sigma_min
    n_c = max(int((y == c).sum()) for c in range(4))
    assert n_c == 76
    hand = 2 * math.sqrt(2) * math.sqrt(math.log(1.25 / DELTA)) * bound * (math.sqrt(n_c) / ipc)
    hand /= sigma_0**2 * EPS * math.sqrt(1 - 1 / ipc)
    prov = distilled.provenance
    assert prov.extras["sigma_0"] == pytest.approx(sigma_0, rel=1e-10)
    assert prov.extras["sigma"] == pytest.approx(hand, rel=1e-10)
    assert (prov.extras["epsilon"], prov.extras["delta"], prov.extras["norm_bound"], prov.extras["sigma_0_source"]) == (EPS, DELTA, bound, "data")
    assert NOISE_CONSTANT == pytest.approx(2 * math.sqrt(2))
    # sigma scales as 1/epsilon.
    half = distill_private(x, y, ipc=ipc, epsilon=EPS / 2, delta=DELTA, norm_bound=bound).provenance.extras["sigma"]
    assert half == pytest.approx(2 * hand, rel=1e-10)


def test_row_norms_general_formula_equals_balanced_closed_form(data):
    _, y = data
    targets = torch.nn.functional.one_hot(y, 4).to(torch.float64)
    for ipc in (2, 3, 7):
        labels_s = torch.arange(4 * ipc) % 4
        targets_s = torch.nn.functional.one_hot(labels_s, 4).to(torch.float64)
        signal, projector = privacy_row_norms(targets_s, targets)
        n_c = torch.bincount(y, minlength=4).to(torch.float64)
        assert torch.allclose(signal, n_c[labels_s].sqrt() / ipc, atol=1e-12, rtol=0)
        assert torch.allclose(projector, torch.full((4 * ipc,), math.sqrt(1 - 1 / ipc), dtype=torch.float64), atol=1e-12, rtol=0)


def test_row_norms_general_formula_equals_explicit_matrices():
    gen = torch.Generator().manual_seed(3)
    targets_s = torch.randn(9, 3, generator=gen, dtype=torch.float64)
    targets = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    signal, projector = privacy_row_norms(targets_s, targets)
    y_s_pinv = torch.linalg.pinv(targets_s.T)
    assert torch.allclose(signal, torch.linalg.norm(y_s_pinv @ targets.T, dim=1), atol=1e-12, rtol=0)
    explicit = torch.eye(9, dtype=torch.float64) - y_s_pinv @ targets_s.T
    assert torch.allclose(projector, torch.linalg.norm(explicit, dim=1), atol=1e-12, rtol=0)


def test_noise_enters_only_through_i_minus_p_with_the_stated_scale(data):
    x, y = data
    ipc = 6
    distilled = distill_private(x, y, ipc=ipc, epsilon=0.9, delta=DELTA, norm_bound=2.0, seed=4)
    _, w = _clipped_lrr(x, y, 2.0)
    d_mat = torch.linalg.pinv(distilled.x.T)  # D = pinv(X_S^T)
    y_s = distilled.y.T
    y_s_pinv = torch.linalg.pinv(y_s)
    # P D = Y_S^+ W exactly: the rows together give back W (W is not private).
    assert _rel(y_s_pinv @ (y_s @ d_mat), y_s_pinv @ w) < 1e-9
    noise = d_mat - y_s_pinv @ w  # (I - P) Z, entries N(0, sigma^2 (1 - 1/ipc))
    expected = distilled.provenance.extras["sigma"] * math.sqrt(1 - 1 / ipc)
    assert float(noise.std()) == pytest.approx(expected, rel=0.15)


def test_seed_changes_points_not_the_model(data):
    x, y = data
    a = distill_private(x, y, ipc=3, epsilon=EPS, delta=DELTA, norm_bound=4.0, seed=0)
    b = distill_private(x, y, ipc=3, epsilon=EPS, delta=DELTA, norm_bound=4.0, seed=0)
    c = distill_private(x, y, ipc=3, epsilon=EPS, delta=DELTA, norm_bound=4.0, seed=1)
    assert torch.equal(a.x, b.x) and not torch.allclose(a.x, c.x)
    assert _rel(a.fit_krr().weights_, c.fit_krr().weights_) < 1e-9


def test_user_sigma_0_and_provenance_survive_save(data, tmp_path):
    x, y = data
    distilled = distill_private(x, y, ipc=2, epsilon=EPS, delta=DELTA, norm_bound=4.0, sigma_0=1.0, dataset="toy")
    loaded = DistilledSet.load(distilled.save(tmp_path / "private.dm"))
    prov = loaded.provenance
    assert prov.extras["sigma_0"] == 1.0 and prov.extras["sigma_0_source"] == "user" and prov.method == "private"
    assert {"epsilon", "delta", "norm_bound", "sigma", "sigma_0"} <= set(prov.extras)
    assert prov == distilled.provenance


def test_clip_rows():
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]], dtype=torch.float64)
    clipped, count = clip_rows(x, 1.0)
    assert count == 1
    assert torch.allclose(clipped, torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]], dtype=torch.float64))


def test_invalid_parameters_raise(data):
    x, y = data
    ok = dict(ipc=2, epsilon=EPS, delta=DELTA, norm_bound=4.0)
    with pytest.raises(ValueError, match="ipc=1 cannot be private"):
        distill_private(x, y, **{**ok, "ipc": 1})
    with pytest.raises(ValueError, match="ipc"):
        distill_private(x, y, **{**ok, "ipc": 0})
    for eps in (0.0, -0.1, 1.0, 2.0, float("nan")):
        with pytest.raises(ValueError, match=r"epsilon must be in \(0, 1\)"):
            distill_private(x, y, **{**ok, "epsilon": eps})
    for delta in (0.0, 1.0, -1e-5):
        with pytest.raises(ValueError, match=r"delta must be in \(0, 1\)"):
            distill_private(x, y, **{**ok, "delta": delta})
    for bound in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="norm_bound"):
            distill_private(x, y, **{**ok, "norm_bound": bound})
    with pytest.raises(ValueError, match="sigma_0"):
        distill_private(x, y, **ok, sigma_0=1e6)


def test_rank_deficient_data_is_refused(data):
    x, y = data
    x = x.clone()
    x[:, 5] = 0.0  # a constant pixel: sigma_min(X) = 0
    with pytest.raises(ValueError, match="rank deficient"):
        distill_private(x, y, ipc=2, epsilon=EPS, delta=DELTA, norm_bound=4.0)


def test_a_row_without_noise_is_refused():
    targets = torch.nn.functional.one_hot(torch.arange(6) % 3, 3).to(torch.float64)
    with pytest.raises(ValueError, match="no noise"):
        gaussian_noise_scale(torch.eye(3, dtype=torch.float64), targets, epsilon=EPS, delta=DELTA, norm_bound=1.0, sigma_0=1.0)


def test_fewer_samples_than_features_uses_the_thin_svd():
    x, y = _problem(n=24, d=40, k=3)
    distilled = distill_private(x, y, ipc=2, epsilon=EPS, delta=DELTA, norm_bound=8.0)
    clipped, _ = clip_rows(x, 8.0)
    w = (torch.linalg.pinv(clipped) @ torch.nn.functional.one_hot(y, 3).to(torch.float64)).T
    assert distilled.recovery_error < 1e-9
    assert _rel(distilled.fit_krr().weights_, w) < 1e-9
    assert distilled.provenance.extras["sigma_0"] == pytest.approx(0.99 * float(torch.linalg.svdvals(clipped)[-1]), rel=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
def test_realised_noise_has_the_recorded_sigma(data, seed):
    # The noise actually drawn is recovered from the output: (I - P)(D - Y_S^+ W) = (I - P) Z, and for
    # Z with i.i.d. N(0, sigma^2) entries ||(I - P) Z||_F^2 / sigma^2 is chi-square with (m - k) d degrees
    # of freedom (I - P is a projector of rank m - k). With m = 200, d = 20 the 1e-6 quantiles bound the
    # realised scale to about +-6% of the recorded sigma, so noise drawn at 0.9 sigma (or 1.1) fails.
    from scipy.stats import chi2

    x, y = data
    ipc, bound = 50, 3.0
    distilled = distill_private(x, y, ipc=ipc, epsilon=EPS, delta=DELTA, norm_bound=bound, seed=seed)
    sigma = distilled.provenance.extras["sigma"]
    _, w = _clipped_lrr(x, y, bound)
    d_mat = torch.linalg.pinv(distilled.x.T)  # (m, d), D = pinv(X_S^T)
    y_s = distilled.y.T
    y_s_pinv = torch.linalg.pinv(y_s)
    noise = d_mat - y_s_pinv @ w
    noise = noise - y_s_pinv @ (y_s @ noise)
    m, d = d_mat.shape
    dof = (m - 4) * d
    statistic = float((noise**2).sum()) / sigma**2
    low, high = chi2.ppf(1e-6, dof), chi2.ppf(1 - 1e-6, dof)
    assert math.sqrt(high / dof) < 1.07 and math.sqrt(low / dof) > 0.93  # the check is tight
    assert low < statistic < high
