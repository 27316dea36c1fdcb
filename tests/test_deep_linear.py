"""Deep linear feature maps (Theorem 5.3 and the docs/math.md §7.2 k-point route)."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from conftest import _problem

from distillmem import KRR, DistilledSet, distill, distill_deep_linear
from distillmem.features import Identity, RandomLinear, from_spec


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def _expanding_teacher(reg: float, seed: int = 3) -> KRR:
    x, y = _problem(n=200, d=6, k=3)
    return KRR(RandomLinear(6, widths=(12, 15), seed=seed), reg=reg).fit(x, y)


def test_forward_is_the_layer_product_and_keeps_dtype():
    fmap = RandomLinear(8, widths=(5, 11, 4), seed=2)
    x = torch.randn(7, 8, dtype=torch.float64)
    expected = x @ fmap.weight0.T @ fmap.weight1.T @ fmap.weight2.T
    assert torch.allclose(fmap(x), expected, atol=1e-13, rtol=0)
    assert fmap(x.float()).dtype == torch.float32
    assert fmap.out_features(8) == 4
    assert fmap.composed.shape == (4, 8)
    # Layers are N(0, 1/fan_in).
    big = RandomLinear(400, widths=(300,), seed=0)
    assert float(big.weight0.var()) == pytest.approx(1 / 400, rel=0.05)
    with pytest.raises(ValueError, match="expects inputs"):
        fmap.check_input(torch.zeros(3, 9))


def test_surjectivity_follows_the_rank_of_the_product():
    assert RandomLinear(20, widths=(30, 12)).surjective  # rank 12 = p
    assert not RandomLinear(6, widths=(12, 15)).surjective  # d < p
    assert not RandomLinear(20, widths=(5, 12)).surjective  # a bottleneck narrower than p


def test_surjective_preimage_round_trip_is_minimum_norm():
    fmap = RandomLinear(20, widths=(30, 12), seed=4)
    f = torch.randn(9, 12, dtype=torch.float64)
    x = fmap.preimage(f)
    assert _rel(fmap(x), f) < 1e-12
    # Minimum norm: x lies in the row space of M.
    m = fmap.composed
    assert _rel(x @ torch.linalg.pinv(m) @ m, x) < 1e-12


def test_non_surjective_preimage_raises():
    with pytest.raises(ValueError, match="not surjective"):
        RandomLinear(6, widths=(12, 15)).preimage(torch.zeros(2, 15, dtype=torch.float64))


def test_spec_round_trip_and_saved_set(tmp_path):
    fmap = RandomLinear(6, widths=(12, 15), seed=9)
    spec = json.loads(json.dumps(fmap.spec()))
    assert spec == {"name": "linear", "params": {"in_features": 6, "widths": [12, 15]}, "seed": 9}
    rebuilt = from_spec(spec)
    assert isinstance(rebuilt, RandomLinear) and torch.equal(rebuilt.composed, fmap.composed)
    assert not torch.equal(RandomLinear(6, widths=(12, 15), seed=10).composed, fmap.composed)

    teacher = _expanding_teacher(1e-3)
    loaded = DistilledSet.load(distill_deep_linear(teacher=teacher, ipc=1).save(tmp_path / "linear.dm"))
    assert loaded.feature_map().spec() == teacher.feature_map_.spec()
    assert _rel(loaded.fit_krr().weights_, teacher.weights_) < 1e-9


@pytest.mark.parametrize("reg", [0.0, 1e-3, 10.0])
def test_expanding_map_is_recovered_exactly_with_k_points(reg):
    teacher = _expanding_teacher(reg)
    fmap = teacher.feature_map_
    assert not fmap.surjective and fmap.rank == 6
    distilled = distill_deep_linear(teacher=teacher, ipc=1)
    assert len(distilled) == 3 and distilled.reg == 0.0  # m = k
    assert distilled.provenance.extras["range_residual"] < 1e-10
    assert distilled.recovery_error < 1e-9
    # Independent check: min-norm least squares on phi(X_S) with one-hot targets.
    refit = (torch.linalg.pinv(fmap(distilled.x)) @ distilled.y).T
    assert _rel(refit, teacher.weights_) < 1e-9
    # The k-point route: phi(X_S)^T = M X_S^T = W^+ Y_S.
    w = teacher.weights_
    assert _rel(fmap(distilled.x).T, torch.linalg.pinv(w) @ distilled.y.T) < 1e-9


def test_more_points_per_class_are_distinct_and_exact():
    teacher = _expanding_teacher(1e-3)
    distilled = distill_deep_linear(teacher=teacher, ipc=3, seed=1)
    assert len(distilled) == 9
    assert torch.cdist(distilled.x, distilled.x).add(torch.eye(9, dtype=torch.float64)).min() > 1e-6
    assert distilled.recovery_error < 1e-9


def test_range_condition_failure_raises():
    teacher = copy.deepcopy(_expanding_teacher(1e-3))
    teacher.weights_ = torch.randn(3, 15, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(ValueError, match=r"range condition Range\(W\^T\)"):
        distill_deep_linear(teacher=teacher)


def test_surjective_linear_map_works_with_the_engine_and_the_k_point_route(make_problem):
    x, y = make_problem(n=200, d=20, k=4)
    fmap = RandomLinear(20, widths=(16, 10), seed=5)
    teacher = KRR(fmap, reg=1e-2).fit(x, y)
    assert distill(x, y, ipc=2, teacher=teacher).recovery_error < 1e-9
    assert distill_deep_linear(teacher=teacher, ipc=2).recovery_error < 1e-9


def test_bad_arguments():
    with pytest.raises(ValueError, match="in_features"):
        RandomLinear(0)
    with pytest.raises(ValueError, match="widths"):
        RandomLinear(4, widths=())
    teacher = _expanding_teacher(1e-3)
    with pytest.raises(ValueError, match="ipc"):
        distill_deep_linear(teacher=teacher, ipc=0)
    with pytest.raises(ValueError, match="fitted"):
        distill_deep_linear(teacher=KRR(RandomLinear(6), reg=1.0))
    x, y = _problem(n=50, d=6, k=3)
    with pytest.raises(ValueError, match="RandomLinear"):
        distill_deep_linear(teacher=KRR(Identity(), reg=1.0).fit(x, y))


# -- the noise for ipc > 1, and the inexactness warning ----------------------------------------------------


@pytest.mark.parametrize(
    "d, widths, k, ipc, seed",
    [(6, (12, 15), 3, 2, 1), (10, (40,), 4, 3, 0), (8, (5, 12), 3, 4, 0)],
    ids=["expanding-ipc2", "wide-ipc3", "bottleneck-ipc4"],
)
def test_noise_lies_in_the_range_of_m_at_the_requested_scale(d, widths, k, ipc, seed):
    # D = pinv(phi(X_S)^T) = Y^+ W + (I - P) Z P_M with Z i.i.d. N(0, s^2), s = noise_scale * std(Y^+ W):
    # ||(I - P) Z P_M||_F^2 / s^2 is chi-square with (m - k) * rank(M) degrees of freedom. Noise that
    # was not projected onto Range(M) is distorted by the preimage and lands far outside that spread.
    from scipy.stats import chi2

    x, y = _problem(n=200, d=d, k=k)
    teacher = KRR(RandomLinear(d, widths=widths, seed=3), reg=1e-3).fit(x, y)
    fmap, noise_scale = teacher.feature_map_, 0.1
    distilled = distill_deep_linear(teacher=teacher, ipc=ipc, seed=seed, noise_scale=noise_scale)
    y_s = distilled.y.T  # (k, m)
    y_s_pinv = torch.linalg.pinv(y_s)
    particular = y_s_pinv @ teacher.weights_
    d_mat = torch.linalg.pinv(fmap(distilled.x).T)
    noise = d_mat - particular
    assert float(torch.linalg.norm(y_s_pinv @ (y_s @ noise))) < 1e-9 * float(particular.norm())  # P D = Y^+ W
    noise = noise - y_s_pinv @ (y_s @ noise)  # (I - P) noise
    m_mat = fmap.composed
    assert float(torch.linalg.norm(noise - noise @ torch.linalg.pinv(m_mat).T @ m_mat.T)) < 1e-9 * float(noise.norm())
    dof = (k * ipc - k) * fmap.rank
    statistic = float((noise**2).sum()) / (noise_scale * float(particular.std())) ** 2
    assert chi2.ppf(1e-6, dof) < statistic < chi2.ppf(1 - 1e-6, dof)


def test_an_exact_set_does_not_warn_and_an_inexact_one_does():
    teacher = _expanding_teacher(1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the exact cases
        for ipc in (1, 3):
            assert distill_deep_linear(teacher=teacher, ipc=ipc).recovery_error < 1e-9
    # Weights outside Range(M), let through by a loose tol: no set can give them back.
    broken = copy.deepcopy(teacher)
    broken.weights_ = torch.randn(3, 15, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.warns(UserWarning, match=r"relative weight error \S+ > 1e-06") as caught:
        distilled = distill_deep_linear(teacher=broken, ipc=2, tol=10.0)
    assert distilled.recovery_error > 1e-6
    assert f"{distilled.recovery_error:.3g}" in str(caught[0].message)
