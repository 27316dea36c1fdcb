"""Identities of docs/math.md checked on the package's outputs with independent float64 algebra.

Samples are rows: features (n, p), weights W (k, p), targets (n, k).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from distillmem import KRR, distill, distill_labels
from distillmem.features import Identity, RandomFCNN, RandomLinear
from distillmem.privacy import gaussian_noise_scale

K = 4


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def _regularized_pinv(features: torch.Tensor, reg: float) -> torch.Tensor:
    """phi_reg(F)^+ = (F F^T + reg I)^-1 F, or pinv(F^T) at reg = 0 (docs/math.md §1)."""
    if reg == 0:
        return torch.linalg.pinv(features.T)
    kernel = features @ features.T + reg * torch.eye(features.shape[0], dtype=torch.float64)
    return torch.linalg.solve(kernel, features)


@pytest.mark.parametrize("solver", ["primal", "svd"])
@pytest.mark.parametrize("reg", [0.0, 0.5])
def test_scaling_rule_features_c_targets_c_prime_ridge_c_squared(make_problem, solver, reg):
    # docs/math.md §11.2: KRR on (c F, c' T) at c^2 reg gives (c'/c) W(reg).
    x, y = make_problem(n=120, d=10)
    targets = torch.nn.functional.one_hot(y, K).to(torch.float64)
    base = KRR(Identity(), reg=reg, solver=solver).fit(x, targets).weights_
    c, c_prime = 0.05, 3.0
    scaled = KRR(Identity(), reg=c**2 * reg, solver=solver).fit(c * x, c_prime * targets).weights_
    assert _rel(scaled, (c_prime / c) * base) < 1e-10
    same = KRR(Identity(), reg=c**2 * reg, solver=solver).fit(c * x, c * targets).weights_
    assert _rel(same, base) < 1e-10


@pytest.mark.parametrize("root", ["plus", "minus"])
def test_theorem_4_1_in_feature_space_with_positive_reg_s(make_problem, root):
    # docs/math.md §3 and §6: the set's regularised pseudo-inverse D has the form Y^+ W + (I - P) Z,
    # sits on the bound 4 reg_s sigma'_1^2 = 1, and the chosen root puts every sigma_i^2 on one side of reg_s.
    x, y = make_problem(n=200, d=12)
    fmap = RandomFCNN(12, seed=2)
    teacher = KRR(fmap, reg=1e-2).fit(x, y)
    ipc = 3
    syn = distill(x, y, ipc=ipc, teacher=teacher, reg_s="bound", root=root, init="noise", seed=1)
    reg_s = syn.reg
    assert reg_s > 0
    features = fmap(syn.x.to(torch.float64))
    d_mat = _regularized_pinv(features, reg_s)  # (m, p)
    y_s = syn.y.T  # (k, m)
    w = teacher.weights_
    assert _rel(y_s @ d_mat, w) < 1e-9
    # P D = Y^+ W: what the noise changes lies in Range(I - P).
    y_pinv = torch.linalg.pinv(y_s)
    assert _rel(y_pinv @ (y_s @ d_mat), y_pinv @ w) < 1e-9
    top = float(torch.linalg.svdvals(d_mat)[0])
    assert 4 * reg_s * top**2 == pytest.approx(1.0, rel=1e-8)
    sigma_sq = torch.linalg.svdvals(features) ** 2
    sigma_sq = sigma_sq[sigma_sq > 1e-20]
    if root == "plus":
        assert float(sigma_sq.min()) >= reg_s * (1 - 1e-8)
    else:
        assert float(sigma_sq.max()) <= reg_s * (1 + 1e-8)


def test_corollary_4_1_1_real_init_is_the_closest_admissible_d(make_problem):
    # docs/math.md §4: with every point of the data a reference, (I - P) D = (I - P) Q_hat with
    # Q_hat = pinv(X_hat^T), up to the order of the points within each class.
    ipc = 5
    x, y = make_problem(n=K * ipc, d=30)
    teacher = KRR(Identity(), reg=1e-3).fit(x, y)
    syn = distill(x, y, ipc=ipc, teacher=teacher, init="real", soft_labels=False, seed=0)
    d_mat = torch.linalg.pinv(syn.x.T)  # D = phi_0(X_S)^+ for the identity map
    q_hat = torch.linalg.pinv(x.T)  # rows follow the points of x
    for c in range(K):
        centered_d = d_mat[syn.labels == c] - d_mat[syn.labels == c].mean(dim=0)
        centered_q = q_hat[y == c] - q_hat[y == c].mean(dim=0)
        distances = torch.cdist(centered_d, centered_q)
        match = distances.argmin(dim=1)
        assert sorted(match.tolist()) == list(range(ipc))  # a bijection onto the class's references
        assert float(distances.min(dim=1).values.max()) < 1e-9 * float(centered_q.norm())
    # and the model is still exact
    assert syn.recovery_error < 1e-9


def test_range_condition_is_necessary_for_any_number_of_points():
    # docs/math.md §7.2: for a linear map M (p, d) every refitted W_S has rows in Range(M), so a W with
    # a part outside Range(M) is out of reach of any set, however large; a W fitted on phi's features is not.
    fmap = RandomLinear(4, widths=(9,), seed=0)
    gen = torch.Generator().manual_seed(0)
    points = torch.randn(60, 4, generator=gen, dtype=torch.float64)
    refitted = KRR(fmap, reg=0.1).fit(points, torch.arange(60) % 3).weights_
    assert fmap.range_residual(refitted) < 1e-12
    outside = torch.randn(3, 9, generator=gen, dtype=torch.float64)
    residual = fmap.range_residual(outside)
    assert residual > 0.1
    teacher = KRR.from_weights(fmap, outside, 0.0, n_features_in=4, n_samples=60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an inexact set may warn; here that is the point
        labelled = distill_labels(points, teacher=teacher)  # 60 points >> p = 9: the best any set can do
    assert labelled.recovery_error >= residual * (1 - 1e-9)
    assert labelled.recovery_error == pytest.approx(residual, rel=1e-6)


def test_theorem_6_2_noise_scale_for_general_targets():
    # docs/math.md §8.3: sigma = max_i 2 sqrt(2) sqrt(ln(1.25/delta)) B ||[Y_S^+]_i T^T|| / (sigma_0^2 eps ||[I - P]_i||).
    gen = torch.Generator().manual_seed(5)
    targets_s = torch.randn(10, 3, generator=gen, dtype=torch.float64)
    targets = torch.randn(80, 3, generator=gen, dtype=torch.float64)
    eps, delta, bound, sigma_0 = 0.5, 1e-5, 2.0, 0.7
    sigma = gaussian_noise_scale(targets_s, targets, epsilon=eps, delta=delta, norm_bound=bound, sigma_0=sigma_0)
    y_pinv = torch.linalg.pinv(targets_s.T)
    signal = torch.linalg.norm(y_pinv @ targets.T, dim=1)
    projector = torch.linalg.norm(torch.eye(10, dtype=torch.float64) - y_pinv @ targets_s.T, dim=1)
    sensitivity = 2 * bound * signal / sigma_0**2  # Delta_i of row i of Y_S^+ W
    # The Gaussian mechanism needs the std of row i's noise, sigma ||[I - P]_i||, to be at least
    # sqrt(2 ln(1.25/delta)) Delta_i / eps; the calibration meets it with equality on the worst row.
    needed = math.sqrt(2 * math.log(1.25 / delta)) * sensitivity / eps
    assert bool((sigma * projector >= needed * (1 - 1e-12)).all())
    assert float((sigma * projector / needed).min()) == pytest.approx(1.0, rel=1e-12)
