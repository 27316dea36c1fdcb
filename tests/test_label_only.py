"""Label-only distillation (Theorem 4.2): fixed points, least-squares targets."""

from __future__ import annotations

import pytest
import torch
from conftest import _problem

from distillmem import KRR, DistilledSet, distill_labels
from distillmem.features import Identity, RandomFCNN
from distillmem.label_only import label_recovery_error

D = 40


def _points(m: int, d: int = D, seed: int = 7) -> torch.Tensor:
    return torch.randn(m, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture(scope="module")
def teacher():
    x, y = _problem()
    return KRR(Identity(), reg=1e-2).fit(x, y)


@pytest.mark.parametrize("reg_s", [0.0, 0.5])
@pytest.mark.parametrize("m", [D, D + 9])
def test_exact_when_m_at_least_d_in_lrr(teacher, m, reg_s, rel_err):
    distilled = distill_labels(_points(m), teacher=teacher, reg_s=reg_s)
    assert distilled.provenance.extras["exact"] is True
    assert distilled.provenance.extras["feature_rank"] == D
    assert distilled.recovery_error < 1e-10
    assert distilled.provenance.extras["predicted_error"] < 1e-10
    assert rel_err(distilled.fit_krr().weights_, teacher.weights_) < 1e-10
    assert distilled.reg == reg_s and distilled.y.shape == (m, 4)


def test_exact_in_feature_space_with_m_equal_p(make_problem):
    x, y = make_problem(n=200, d=30, k=3)
    fmap = RandomFCNN(30, widths=(20,), seed=1)
    teacher = KRR(fmap, reg=1e-3).fit(x, y)
    distilled = distill_labels(_points(20, 30), teacher=teacher)
    assert distilled.provenance.extras["p"] == 20 and distilled.provenance.extras["exact"]
    assert distilled.recovery_error < 1e-9


def test_targets_at_reg_zero_are_the_teachers_scores(teacher):
    x_s = _points(12)
    distilled = distill_labels(x_s, teacher=teacher)
    assert torch.allclose(distilled.y, teacher.decision_function(x_s), atol=1e-12, rtol=0)
    assert torch.equal(distilled.labels, distilled.y.argmax(dim=1))


@pytest.mark.parametrize("reg_s", [0.0, 0.3])
def test_reported_error_matches_refit_and_theorem_formula_below_d(teacher, reg_s, naive_ridge, rel_err):
    x_s = _points(15)
    distilled = distill_labels(x_s, teacher=teacher, reg_s=reg_s)
    w = teacher.weights_
    refit = naive_ridge(x_s, distilled.y, reg_s)  # an independent SVD-based KRR solve
    measured = rel_err(refit, w)
    assert measured > 1e-3  # m < d: not exact in general
    assert distilled.provenance.extras["exact"] is False
    assert distilled.recovery_error == pytest.approx(measured, rel=1e-9)
    assert distilled.provenance.extras["predicted_error"] == pytest.approx(measured, rel=1e-9)
    # docs/math.md §5: ||W (Q^+ Q - I_d)|| with Q = phi_reg(X_S)^+ (x_reg_pinv below) and Q^+ = x_reg.
    x_cols = x_s.T
    x_reg_pinv = torch.linalg.solve(x_cols.T @ x_cols + reg_s * torch.eye(15, dtype=torch.float64), x_cols.T)
    x_reg = torch.linalg.pinv(x_reg_pinv)
    formula = torch.linalg.norm(w @ (x_reg @ x_reg_pinv - torch.eye(D, dtype=torch.float64))) / torch.linalg.norm(w)
    assert distilled.recovery_error == pytest.approx(float(formula), rel=1e-8)
    # Least squares: any other targets do at least as badly.
    other = distilled.y + 0.1 * torch.randn(distilled.y.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert rel_err(naive_ridge(x_s, other, reg_s), w) >= measured


def test_error_decreases_as_m_grows(teacher):
    pool = _points(D)
    errors = [label_recovery_error(pool[:m], teacher.weights_) for m in (4, 10, 20, 30, 39, 40)]
    assert all(b <= a + 1e-12 for a, b in zip(errors, errors[1:]))
    assert errors[0] > 0.5 and errors[-1] < 1e-10


def test_images_keep_their_shape_and_provenance_survives_save(teacher, tmp_path):
    x_s = _points(D).reshape(D, 1, 5, 8)
    distilled = distill_labels(x_s, teacher=teacher, dataset="toy", mean=(0.1,), std=(0.3,))
    assert distilled.image_shape == (1, 5, 8)
    loaded = DistilledSet.load(distilled.save(tmp_path / "labels.dm"))
    assert loaded.provenance.method == "label_only"
    assert loaded.provenance.extras["exact"] is True
    assert loaded.provenance.recovery_error == distilled.recovery_error


def test_bad_inputs(teacher):
    with pytest.raises(ValueError, match="features"):
        distill_labels(_points(10, D + 1), teacher=teacher)
    x_nan = _points(10)
    x_nan[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        distill_labels(x_nan, teacher=teacher)
    with pytest.raises(ValueError, match="fitted"):
        distill_labels(_points(10), teacher=KRR(Identity(), reg=1.0))
    with pytest.raises(TypeError, match="KRR"):
        distill_labels(_points(10), teacher=object())
    for reg_s in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="reg_s"):
            distill_labels(_points(10), teacher=teacher, reg_s=reg_s)
    with pytest.raises(ValueError, match="empty"):
        distill_labels(torch.zeros(0, D, dtype=torch.float64), teacher=teacher)
