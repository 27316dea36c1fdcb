"""Tests for distillmem.distill / KRRDistiller: exact recovery of the KRR weights and argument checks."""

from __future__ import annotations

import functools
import importlib

import pytest
import torch
from conftest import _naive_ridge, _problem, _rel_err

import distillmem
from distillmem import KRR, KRRDistiller, distill
from distillmem.data import load_dataset
from distillmem.features import Identity, RandomFCNN, RandomFourier

TEACHER_REG = 1e-3
K = 4

MAPS = {
    "identity": lambda: Identity(),
    "fcnn-square": lambda: RandomFCNN(40, seed=1),
    "fcnn-narrowing": lambda: RandomFCNN(40, widths=(30, 20), seed=2),
    "rff-square": lambda: RandomFourier(40, sigma=4.0, seed=3),
    "rff-narrow": lambda: RandomFourier(40, 20, sigma=4.0, seed=4),
}
FOURIER = ["rff-square", "rff-narrow"]

# (init, ipc, n): m = 4 * ipc distilled points from n real ones. ipc=11 gives m=44 > p (40 or 20);
# (noise, 10, 30) gives m=40 > n=30.
CASES = [
    ("noise", 1, 300),
    ("noise", 3, 300),
    ("noise", 11, 300),
    ("noise", 10, 30),
    ("real", 1, 300),
    ("real", 3, 300),
    ("real", 11, 300),
]
# reg_s mode -> (reg_s, root); "below" is half the admissible bound of the same D.
REG_S = {
    "zero": (0.0, "plus"),
    "bound-plus": ("bound", "plus"),
    "bound-minus": ("bound", "minus"),
    "below": (None, "plus"),
}


def one_hot(labels: torch.Tensor, k: int = K) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, k).to(torch.float64)


@functools.lru_cache(maxsize=None)
def teacher_weights(map_name: str, n: int) -> torch.Tensor:
    """The original model, from a naive ridge solve on the explicit features."""
    x, y = _problem(n=n)
    return _naive_ridge(MAPS[map_name]()(x), one_hot(y), TEACHER_REG)


@functools.lru_cache(maxsize=None)
def run(map_name: str, init: str, ipc: int, n: int, mode: str) -> KRRDistiller:
    x, y = _problem(n=n)
    reg_s, root = REG_S[mode]
    if mode == "below":
        reg_s = 0.5 * run(map_name, init, ipc, n, "bound-plus").distilled_.provenance.reg_s
    return KRRDistiller(MAPS[map_name](), ipc=ipc, reg=TEACHER_REG, reg_s=reg_s, root=root, init=init, seed=0).fit(
        x, y
    )


def student_weights(syn: distillmem.DistilledSet, fmap) -> torch.Tensor:
    """Naive ridge on the distilled points, with an independent copy of the feature map."""
    return _naive_ridge(fmap(syn.x), syn.y, syn.reg)


# -- exact recovery ----------------------------------------------------------------------


CASE_IDS = [f"{i}-ipc{c}-n{n}" for i, c, n in CASES]


@pytest.mark.parametrize("mode", list(REG_S))
@pytest.mark.parametrize("init, ipc, n", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("map_name", list(MAPS))
def test_distilled_set_recovers_the_weights(map_name, init, ipc, n, mode):
    # Independent check: naive (SVD) ridge on phi(syn.x) vs naive ridge on the real data.
    syn = run(map_name, init, ipc, n, mode).distilled_
    assert len(syn) == K * ipc
    assert _rel_err(student_weights(syn, MAPS[map_name]()), teacher_weights(map_name, n)) < 1e-9


@pytest.mark.parametrize("mode", list(REG_S))
@pytest.mark.parametrize("init, ipc, n", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("map_name", list(MAPS))
def test_reported_recovery_error_is_tiny(map_name, init, ipc, n, mode):
    # The engine's own refit (KRR on the distilled set) must see the exactness too.
    syn = run(map_name, init, ipc, n, mode).distilled_
    assert syn.recovery_error < 1e-9


@pytest.mark.parametrize("map_name", list(MAPS))
def test_teacher_is_the_naive_ridge_model(map_name):
    distiller = run(map_name, "noise", 3, 300, "zero")
    assert _rel_err(distiller.teacher_.weights_, teacher_weights(map_name, 300)) < 1e-10


@pytest.mark.parametrize("map_name", list(MAPS))
def test_refit_through_fit_krr_recovers_the_weights(map_name):
    syn = run(map_name, "real", 3, 300, "bound-plus").distilled_
    student = syn.fit_krr()
    assert _rel_err(student.weights_, teacher_weights(map_name, 300)) < 1e-9


@pytest.mark.parametrize("map_name", list(MAPS))
def test_recovered_student_predicts_like_teacher(map_name):
    distiller = run(map_name, "noise", 3, 300, "bound-minus")
    x_test, _ = _problem(n=200, seed=7)
    student = distiller.distilled_.fit_krr()
    assert torch.equal(student.predict(x_test), distiller.teacher_.predict(x_test))


def test_recovery_error_attribute_matches_the_set():
    distiller = run("fcnn-square", "noise", 3, 300, "zero")
    assert distiller.recovery_error_ == distiller.distilled_.recovery_error
    assert distiller.distilled_.provenance.recovery_error == distiller.recovery_error_


# -- theory checks ---------------------------------------------------------------------------


def test_identity_one_image_per_class_is_pinv_of_w():
    # docs/math.md §3: with m = k, one-hot Y_S = I and reg_s = 0, X_S = (W^+)^T (samples as rows).
    distiller = run("identity", "noise", 1, 300, "zero")
    syn = distiller.distilled_
    w = distiller.teacher_.weights_
    assert torch.equal(syn.y, torch.eye(K, dtype=torch.float64))
    assert _rel_err(syn.x, torch.linalg.pinv(w).T) < 1e-10


@pytest.mark.parametrize("root, sign", [("plus", 1.0), ("minus", -1.0)])
def test_identity_one_image_per_class_positive_reg_s_follows_theorem(root, sign):
    # D = W; X_S = U diag((1 +- sqrt(1 - 4 reg s'^2)) / (2 s')) V^T from the SVD of W.
    distiller = run("identity", "noise", 1, 300, f"bound-{root}")
    reg = distiller.distilled_.provenance.reg_s
    v, s, u_t = torch.linalg.svd(distiller.teacher_.weights_, full_matrices=False)
    sigma = (1 + sign * torch.sqrt((1 - 4 * reg * s**2).clamp_min(0))) / (2 * s)
    assert _rel_err(distiller.distilled_.x, (v * sigma) @ u_t) < 1e-10


@pytest.mark.parametrize("map_name", list(MAPS))
def test_bound_is_one_over_four_top_singular_value_squared(map_name):
    # With ipc = 1 the free part vanishes and D = W, so the bound is 1 / (4 sigma_1(W)^2).
    distiller = run(map_name, "noise", 1, 300, "bound-plus")
    top = float(torch.linalg.svdvals(distiller.teacher_.weights_)[0])
    assert distiller.distilled_.provenance.reg_s == pytest.approx(1.0 / (4 * top**2), rel=1e-12)


@pytest.mark.parametrize("map_name", list(MAPS))
def test_below_bound_records_the_given_reg_s(map_name):
    bound = run(map_name, "noise", 3, 300, "bound-plus").distilled_.provenance.reg_s
    assert run(map_name, "noise", 3, 300, "below").distilled_.provenance.reg_s == 0.5 * bound


# -- labels ------------------------------------------------------------------------------------


@pytest.mark.parametrize("init, ipc, n", CASES, ids=CASE_IDS)
def test_labels_are_class_interleaved(init, ipc, n):
    syn = run("fcnn-square", init, ipc, n, "zero").distilled_
    assert syn.labels.dtype == torch.int64
    assert torch.equal(syn.labels, torch.arange(K * ipc) % K)
    assert syn.x.shape == (K * ipc, 40) and syn.y.shape == (K * ipc, K)


@pytest.mark.parametrize("map_name", list(MAPS))
@pytest.mark.parametrize("ipc", [1, 3, 11])
def test_noise_init_targets_are_one_hot_up_to_range_scale(map_name, ipc):
    syn = run(map_name, "noise", ipc, 300, "zero").distilled_
    scale = syn.provenance.range_scale
    assert syn.provenance.extras["soft_labels"] is False
    torch.testing.assert_close(syn.y * scale, one_hot(syn.labels), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("map_name", list(MAPS))
def test_real_init_uses_soft_labels(map_name):
    syn = run(map_name, "real", 3, 300, "zero").distilled_
    scale = syn.provenance.range_scale
    assert syn.provenance.extras["soft_labels"] is True
    assert float((syn.y * scale - one_hot(syn.labels)).abs().max()) > 1e-3


@pytest.mark.parametrize("map_name", ["identity", "fcnn-square", "fcnn-narrowing"])
def test_soft_labels_are_teacher_predictions_on_real_points_of_the_class(map_name):
    # Corollary 4.1.1 with reg_s = 0: Y_S = W phi(X_ref), for class-balanced real references.
    distiller = run(map_name, "real", 3, 300, "zero")
    syn = distiller.distilled_
    x, y = _problem(n=300)
    predictions = MAPS[map_name]()(x) @ teacher_weights(map_name, 300).T
    gaps = (syn.y[:, None, :] - predictions[None, :, :]).norm(dim=2)  # (m, n)
    nearest = gaps.argmin(dim=1)
    assert float(gaps.min(dim=1).values.max()) < 1e-10
    assert torch.equal(y[nearest], syn.labels)
    assert nearest.unique().numel() == len(syn)  # references drawn without replacement


@pytest.mark.parametrize("map_name", list(MAPS))
def test_soft_labels_can_be_turned_off(map_name):
    x, y = _problem(n=300)
    syn = distill(x, y, ipc=3, feature_map=MAPS[map_name](), reg=TEACHER_REG, init="real", soft_labels=False)
    assert syn.provenance.extras["soft_labels"] is False
    torch.testing.assert_close(syn.y * syn.provenance.range_scale, one_hot(syn.labels), rtol=1e-14, atol=1e-14)
    assert _rel_err(student_weights(syn, MAPS[map_name]()), teacher_weights(map_name, 300)) < 1e-9


# -- RFF range rescaling -------------------------------------------------------------------------


@pytest.mark.parametrize("map_name", FOURIER)
@pytest.mark.parametrize("mode", ["zero", "bound-plus", "below"])
def test_rff_reg_is_divided_by_range_scale_squared(map_name, mode):
    syn = run(map_name, "noise", 3, 300, mode).distilled_
    scale = syn.provenance.range_scale
    assert abs(scale - 1.0) > 1e-2  # the features really were rescaled
    assert syn.reg == pytest.approx(syn.provenance.reg_s / scale**2, rel=1e-14)


@pytest.mark.parametrize("map_name", FOURIER)
@pytest.mark.parametrize("mode", ["zero", "bound-plus"])
def test_rff_student_is_w_itself_not_a_multiple(map_name, mode):
    syn = run(map_name, "noise", 3, 300, mode).distilled_
    scale = syn.provenance.range_scale
    fmap = MAPS[map_name]()
    teacher = teacher_weights(map_name, 300)
    # The stored (rescaled) targets give W exactly; undoing the target rescale gives scale * W.
    assert _rel_err(_naive_ridge(fmap(syn.x), syn.y, syn.reg), teacher) < 1e-9
    assert _rel_err(_naive_ridge(fmap(syn.x), syn.y * scale, syn.reg), scale * teacher) < 1e-9


@pytest.mark.parametrize("map_name", ["identity", "fcnn-square", "fcnn-narrowing"])
def test_unbounded_maps_are_not_rescaled(map_name):
    syn = run(map_name, "noise", 3, 300, "bound-plus").distilled_
    assert syn.provenance.range_scale == 1.0
    assert syn.reg == syn.provenance.reg_s


# -- teacher ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("map_name", list(MAPS))
def test_prefitted_teacher_needs_no_data_for_noise_init(map_name):
    x, y = _problem(n=300)
    teacher = KRR(MAPS[map_name](), reg=TEACHER_REG).fit(x, y)
    syn = distill(None, None, ipc=2, teacher=teacher, reg_s="bound")
    assert _rel_err(student_weights(syn, MAPS[map_name]()), teacher_weights(map_name, 300)) < 1e-9
    assert syn.provenance.teacher_reg == TEACHER_REG
    assert syn.provenance.n == 300


def test_prefitted_teacher_weights_are_distilled_not_a_refit():
    # The teacher is fitted with reg=1.0; the distiller's own reg must be ignored.
    x, y = _problem(n=300)
    teacher = KRR(RandomFCNN(40, seed=1), reg=1.0).fit(x, y)
    syn = distill(x, y, ipc=2, teacher=teacher, reg=1e-6, init="real")
    assert _rel_err(student_weights(syn, RandomFCNN(40, seed=1)), teacher.weights_) < 1e-9
    assert syn.provenance.teacher_reg == 1.0


def test_teacher_with_auto_reg_is_recovered():
    x, y = _problem(n=300)
    distiller = KRRDistiller(RandomFCNN(40, seed=1), ipc=2, reg="auto").fit(x, y)
    teacher = distiller.teacher_
    assert teacher.reg_ in teacher.val_accuracy_
    assert _rel_err(student_weights(distiller.distilled_, RandomFCNN(40, seed=1)), teacher.weights_) < 1e-9


def test_feature_map_differing_from_teacher_raises():
    x, y = _problem(n=300)
    teacher = KRR(RandomFCNN(40, seed=1), reg=TEACHER_REG).fit(x, y)
    with pytest.raises(ValueError, match="differs from the teacher's"):
        distill(None, None, ipc=2, teacher=teacher, feature_map=RandomFCNN(40, seed=2))


@pytest.mark.parametrize("teacher", [KRR(RandomFCNN(40, seed=1), reg=0.1), KRR(reg=0.1)], ids=["with-map", "default-map"])
def test_unfitted_teacher_raises(teacher):
    with pytest.raises(ValueError, match="teacher must be a fitted KRR"):
        distill(None, None, ipc=2, teacher=teacher)


def test_real_init_with_teacher_needs_data():
    x, y = _problem(n=300)
    teacher = KRR(Identity(), reg=TEACHER_REG).fit(x, y)
    with pytest.raises(ValueError, match='init="real" needs the real data x and y'):
        distill(None, None, ipc=2, teacher=teacher, init="real")


@pytest.mark.parametrize("map_name", ["identity", "fcnn-square", "rff-square"])
def test_real_init_with_teacher_rejects_wrong_width_data(map_name):
    x, y = _problem(n=300)
    teacher = KRR(MAPS[map_name](), reg=TEACHER_REG).fit(x, y)
    with pytest.raises(ValueError, match=r"x has 30 features|expects inputs of shape"):
        distill(x[:, :30], y, ipc=2, teacher=teacher, init="real")


def test_no_data_and_no_teacher_raises():
    with pytest.raises(ValueError, match="is required unless a fitted teacher is given"):
        distill(None, None, ipc=2)


# -- initialisation -------------------------------------------------------------------------------------


def mean_distance_to_same_class(points: torch.Tensor, labels: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    distances = torch.cdist(points, x)
    distances[labels[:, None] != y[None, :]] = float("inf")
    return float(distances.min(dim=1).values.mean())


@pytest.mark.parametrize("map_name", ["identity", "fcnn-square", "fcnn-narrowing"])
def test_real_init_points_are_closer_to_real_data_than_noise_init(map_name):
    x, y = _problem(n=300)
    real = run(map_name, "real", 3, 300, "zero").distilled_
    noise = run(map_name, "noise", 3, 300, "zero").distilled_
    near_real = mean_distance_to_same_class(real.x, real.labels, x, y)
    near_noise = mean_distance_to_same_class(noise.x, noise.labels, x, y)
    assert near_real < 0.5 * near_noise


@pytest.mark.parametrize("map_name", FOURIER)
def test_rff_real_init_features_are_closer_to_real_features_than_noise_init(map_name):
    # The arccos preimage picks the principal branch, so for RFF closeness holds in feature space
    # (after undoing the range rescale), not in input space.
    x, y = _problem(n=300)
    fmap = MAPS[map_name]()
    real = run(map_name, "real", 3, 300, "zero").distilled_
    noise = run(map_name, "noise", 3, 300, "zero").distilled_
    real_feats = fmap(real.x) * real.provenance.range_scale
    noise_feats = fmap(noise.x) * noise.provenance.range_scale
    near_real = mean_distance_to_same_class(real_feats, real.labels, fmap(x), y)
    near_noise = mean_distance_to_same_class(noise_feats, noise.labels, fmap(x), y)
    assert near_real < 0.5 * near_noise


@pytest.mark.parametrize("init", ["noise", "real"])
def test_same_seed_gives_identical_sets(init):
    x, y = _problem(n=300)
    a = distill(x, y, ipc=3, feature_map=RandomFCNN(40, seed=1), reg=TEACHER_REG, init=init, seed=5)
    b = distill(x, y, ipc=3, feature_map=RandomFCNN(40, seed=1), reg=TEACHER_REG, init=init, seed=5)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.labels, b.labels)


@pytest.mark.parametrize("init", ["noise", "real"])
def test_different_seed_gives_different_sets(init):
    x, y = _problem(n=300)
    a = distill(x, y, ipc=3, feature_map=RandomFCNN(40, seed=1), reg=TEACHER_REG, init=init, seed=5)
    b = distill(x, y, ipc=3, feature_map=RandomFCNN(40, seed=1), reg=TEACHER_REG, init=init, seed=6)
    assert not torch.allclose(a.x, b.x)


def test_numpy_inputs_give_the_same_set_as_tensors():
    x, y = _problem(n=300)
    a = distill(x, y, ipc=3, feature_map=RandomFCNN(40, seed=1), reg=TEACHER_REG, init="real")
    b = distill(x.numpy(), y.numpy(), ipc=3, feature_map=RandomFCNN(40, seed=1), reg=TEACHER_REG, init="real")
    assert torch.equal(a.labels, b.labels)
    assert _rel_err(b.x, a.x) < 1e-10


def test_image_inputs_record_shape_and_normalisation():
    x, y = _problem(n=300)
    syn = distill(
        x.reshape(300, 2, 4, 5), y, ipc=2, reg=TEACHER_REG, dataset="toy", mean=(0.5, 0.25), std=(0.1, 0.2)
    )
    assert syn.image_shape == (2, 4, 5)
    assert syn.x.shape == (8, 40)
    assert (syn.mean, syn.std, syn.provenance.dataset) == ((0.5, 0.25), (0.1, 0.2), "toy")


def test_provenance_records_the_settings():
    syn = run("fcnn-narrowing", "real", 3, 300, "bound-minus").distilled_
    provenance = syn.provenance
    assert syn.feature_map_spec == MAPS["fcnn-narrowing"]().spec()
    assert (provenance.ipc, provenance.init, provenance.extras["root"], provenance.seed) == (3, "real", "minus", 0)
    assert provenance.teacher_reg == TEACHER_REG
    assert provenance.distillmem_version == distillmem.__version__


# -- bad arguments ----------------------------------------------------------------------------------------


def test_reg_s_above_the_bound_raises():
    x, y = _problem(n=300)
    bound = run("fcnn-square", "noise", 3, 300, "bound-plus").distilled_.provenance.reg_s
    with pytest.raises(ValueError, match="exceeds the admissible bound"):
        distill(x, y, ipc=3, feature_map=RandomFCNN(40, seed=1), reg=TEACHER_REG, reg_s=1.01 * bound)


@pytest.mark.parametrize(
    "ipc, error, message",
    [(0, ValueError, "ipc must be >= 1, got 0"), (-1, ValueError, "ipc must be >= 1"),
     (2.5, TypeError, "ipc must be an integer, got 2.5"), ("3", TypeError, "ipc must be an integer"),
     (None, TypeError, "ipc must be an integer"), (True, TypeError, "ipc must be an integer, got True")],
)
def test_bad_ipc_raises(ipc, error, message):
    x, y = _problem(n=300)
    with pytest.raises(error, match=message):
        distill(x, y, ipc=ipc, reg=TEACHER_REG)


@pytest.mark.parametrize("init", ["random", "Real", None])
def test_bad_init_raises(init):
    x, y = _problem(n=300)
    with pytest.raises(ValueError, match="init must be one of"):
        distill(x, y, ipc=2, reg=TEACHER_REG, init=init)


@pytest.mark.parametrize("root", ["both", "+", None])
def test_bad_root_raises(root):
    x, y = _problem(n=300)
    with pytest.raises(ValueError, match="root must be one of"):
        distill(x, y, ipc=2, reg=TEACHER_REG, reg_s="bound", root=root)


@pytest.mark.parametrize(
    "reg_s, error, message",
    [(-1e-3, ValueError, "reg_s must be >= 0"), (float("nan"), ValueError, "reg_s must be a finite number"),
     (float("inf"), ValueError, "reg_s must be a finite number"), ("max", ValueError, "reg_s must be a number >= 0 or 'bound'"),
     (None, TypeError, "reg_s must be a real number, got None"), (True, TypeError, "reg_s must be a real number")],
)
def test_bad_reg_s_raises(reg_s, error, message):
    x, y = _problem(n=300)
    with pytest.raises(error, match=message):
        distill(x, y, ipc=2, reg=TEACHER_REG, reg_s=reg_s)


@pytest.mark.parametrize(
    "noise_scale, error, message",
    [(0.0, ValueError, "noise_scale must be > 0"), (float("inf"), ValueError, "noise_scale must be a finite number"),
     (float("nan"), ValueError, "noise_scale must be a finite number"), (None, TypeError, "noise_scale must be a real")],
)
def test_bad_noise_scale_raises(noise_scale, error, message):
    x, y = _problem(n=300)
    with pytest.raises(error, match=message):
        distill(x, y, ipc=2, reg=TEACHER_REG, noise_scale=noise_scale)


@pytest.mark.parametrize(
    "fmap", [RandomFCNN(40, widths=(50,), seed=0), RandomFourier(40, 60, seed=0)], ids=["fcnn-wide", "rff-wide"]
)
def test_non_surjective_map_raises(fmap):
    x, y = _problem(n=300)
    with pytest.raises(ValueError, match="not surjective"):
        distill(x, y, ipc=2, feature_map=fmap, reg=TEACHER_REG)


def test_real_init_with_too_few_points_of_a_class_raises():
    x, y = _problem(n=300)
    keep = (y != 2) | (torch.arange(300) < 40)  # leaves class 2 with few points
    x, y = x[keep], y[keep]
    count = int((y == 2).sum())
    with pytest.raises(ValueError, match=f"needs {count + 1} points of class 2, the data has {count}"):
        distill(x, y, ipc=count + 1, reg=TEACHER_REG, init="real")


def test_bad_teacher_data_is_rejected_by_krr():
    x, y = _problem(n=300)
    x = x.clone()
    x[3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or Inf \(first at row 3\)"):
        distill(x, y, ipc=2, reg=TEACHER_REG)


# -- real data -------------------------------------------------------------------------------------------------


def test_digits_student_predicts_exactly_like_teacher():
    data = load_dataset("digits")
    distiller = KRRDistiller(RandomFCNN(64, seed=0), ipc=10, reg="auto").fit(data.x_train, data.y_train)
    teacher = distiller.teacher_
    student = distiller.distilled_.fit_krr()
    assert len(distiller.distilled_) == 100
    assert teacher.score(data.x_test, data.y_test) > 0.9
    assert torch.equal(student.predict(data.x_test), teacher.predict(data.x_test))
    assert student.score(data.x_test, data.y_test) == teacher.score(data.x_test, data.y_test)


def test_an_inexact_distill_warns_at_the_callers_line(monkeypatch, problem):
    # distill() reaches the warning through more frames than the other builders;
    # the warning must still name this file, not a line inside distillmem.
    module = importlib.import_module("distillmem.distill")  # the package attribute is the function
    monkeypatch.setattr(module, "refit_error", lambda *args, **kwargs: 1.0)
    x, y = problem
    with pytest.warns(UserWarning, match="relative weight error") as caught:
        distill(x, y, ipc=1, reg=1e-3)
    assert caught[0].filename == __file__


@pytest.mark.parametrize("init", ["noise", "real"])
def test_classes_the_teacher_never_saw_get_no_points_and_the_set_stays_exact(problem, init):
    # With n_classes above the classes present, W has zero rows; points for them would
    # only carry projected noise and leave the set's model ill-conditioned (error ~1e11).
    x, y = problem
    keep = y < 3
    teacher = KRR(RandomFCNN(in_features=40, seed=0), reg=1.0, n_classes=6).fit(x[keep], y[keep])
    syn = distill(x[keep], y[keep], ipc=3, teacher=teacher, init=init)
    assert len(syn) == 3 * 3
    assert sorted(syn.labels.unique().tolist()) == [0, 1, 2]
    assert syn.y.shape[1] == 6
    assert syn.recovery_error < 1e-9
