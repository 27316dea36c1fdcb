"""Hostile and edge inputs at the engine's public boundary: each gets a correct result or a clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from distillmem import KRR, MomentMemory
from distillmem._validation import check_int, check_real
from distillmem.features import Identity, RandomConv, RandomFCNN, RandomFourier, RandomLinear, from_spec

# -- scalar hyperparameters ------------------------------------------------------------


@pytest.mark.parametrize("value", [3, np.int64(3), np.int32(3), np.uint8(3), torch.tensor(3)])
def test_check_int_accepts_integers_and_returns_plain_int(value):
    out = check_int(value, "ipc", minimum=1)
    assert out == 3 and type(out) is int


@pytest.mark.parametrize("value", [True, np.bool_(False), 2.5, 3.0, "3", None, [3]])
def test_check_int_refuses_non_integers_naming_the_argument(value):
    with pytest.raises(TypeError, match=r"ipc must be an integer, got"):
        check_int(value, "ipc")


def test_check_int_minimum():
    assert check_int(0, "n", minimum=0) == 0
    with pytest.raises(ValueError, match=r"n must be >= 1, got 0"):
        check_int(0, "n", minimum=1)


@pytest.mark.parametrize("value", [2, 2.0, np.float32(2.0), np.int64(2), torch.tensor(2.0, dtype=torch.float64)])
def test_check_real_accepts_real_numbers_and_returns_plain_float(value):
    out = check_real(value, "reg", minimum=0)
    assert out == 2.0 and type(out) is float


@pytest.mark.parametrize("value", [True, np.bool_(True), None, "1", [1.0], 1j])
def test_check_real_refuses_non_reals_naming_the_argument(value):
    with pytest.raises(TypeError, match=r"reg must be a real number, got"):
        check_real(value, "reg")


@pytest.mark.parametrize("value", [float("nan"), np.float64("nan"), float("inf"), -np.inf])
def test_check_real_refuses_non_finite(value):
    with pytest.raises(ValueError, match=r"reg must be a finite number"):
        check_real(value, "reg")


def test_check_real_bounds_and_inf():
    assert check_real(float("inf"), "scale", allow_inf=True) == float("inf")
    with pytest.raises(ValueError, match=r"scale must be a finite number, got nan"):
        check_real(float("nan"), "scale", allow_inf=True)
    with pytest.raises(ValueError, match=r"reg must be >= 0"):
        check_real(-1e-9, "reg", minimum=0)
    with pytest.raises(ValueError, match=r"sigma must be > 0"):
        check_real(0, "sigma", positive=True)


# -- KRR and MomentMemory hyperparameters ---------------------------------------------------


@pytest.mark.parametrize(
    "params, error, message",
    [
        ({"reg": True}, TypeError, "reg must be a real number, got True"),
        ({"reg": "1.0"}, ValueError, 'reg must be a float >= 0 or "auto"'),
        ({"reg": 0.1, "chunk_size": 2.5}, TypeError, "chunk_size must be an integer, got 2.5"),
        ({"reg": 0.1, "chunk_size": True}, TypeError, "chunk_size must be an integer, got True"),
        ({"reg": 0.1, "n_classes": True}, TypeError, "n_classes must be an integer, got True"),
        ({"reg": 0.1, "n_classes": 4.0}, TypeError, "n_classes must be an integer, got 4.0"),
        ({"seed": 1.5}, TypeError, "seed must be an integer, got 1.5"),
        ({"val_fraction": "0.1"}, TypeError, "val_fraction must be a real number"),
        ({"val_fraction": float("nan")}, ValueError, "val_fraction must be a finite number"),
    ],
)
def test_krr_scalar_hyperparameters_are_checked(problem, params, error, message):
    x, y = problem
    with pytest.raises(error, match=message):
        KRR(Identity(), **params).fit(x, y)


def test_krr_accepts_numpy_scalars_like_python_numbers(problem):
    x, y = problem
    reference = KRR(Identity(), reg=1.0, chunk_size=7, solver="primal").fit(x, y)
    model = KRR(Identity(), reg=np.int64(1), chunk_size=np.int64(7), n_classes=np.int32(4), solver="primal").fit(x, y)
    assert type(model.reg_) is float and model.reg_ == 1.0
    assert torch.equal(model.weights_, reference.weights_)


@pytest.mark.parametrize(
    "grid, error, message",
    [
        ([float("nan")], ValueError, r"reg_grid\[0\] must be a finite number, got nan"),
        ([1.0, float("inf")], ValueError, r"reg_grid\[1\] must be a finite number, got inf"),
        (["a"], TypeError, r"reg_grid\[0\] must be a real number, got 'a'"),
        ([0.1, True], TypeError, r"reg_grid\[1\] must be a real number, got True"),
        ([0.1, None], TypeError, r"reg_grid\[1\] must be a real number, got None"),
        ([], ValueError, "reg_grid must be a non-empty sequence"),
        ("0.1", TypeError, "reg_grid must be a 1-D sequence of numbers"),
        (0.1, TypeError, "reg_grid must be a 1-D sequence of numbers"),
        (np.array(0.1), TypeError, "reg_grid must be a 1-D sequence of numbers"),
        (np.ones((2, 2)), TypeError, "reg_grid must be a 1-D sequence of numbers"),
    ],
)
def test_bad_reg_grid_entries_are_named(problem, grid, error, message):
    x, y = problem
    with pytest.raises(error, match=message):
        KRR(Identity(), reg="auto", reg_grid=grid).fit(x, y)


def test_reg_grid_of_numpy_values_selects_a_plain_float(problem):
    x, y = problem
    model = KRR(Identity(), reg="auto", reg_grid=np.array([0.01, 1.0, 100.0])).fit(x, y)
    assert type(model.reg_) is float and model.reg_ in (0.01, 1.0, 100.0)
    assert all(type(r) is float for r in model.val_accuracy_)


@pytest.mark.parametrize(
    "params, error, message",
    [
        ({"n_classes": True}, TypeError, "n_classes must be an integer, got True"),
        ({"n_classes": 0}, ValueError, "n_classes must be >= 1, got 0"),
        ({"n_classes": 4, "max_points": True}, TypeError, "max_points must be an integer, got True"),
        ({"n_classes": 4, "chunk_size": 2.5}, TypeError, "chunk_size must be an integer, got 2.5"),
    ],
)
def test_memory_hyperparameters_are_checked(problem, params, error, message):
    x, y = problem
    with pytest.raises(error, match=message):
        MomentMemory(Identity(), **params).update(x, y)


@pytest.mark.parametrize("n_seen, error", [(-5, ValueError), (0, ValueError), (2.5, TypeError), (True, TypeError)])
def test_from_features_checks_n_seen(problem, n_seen, error):
    x, y = problem
    with pytest.raises(error, match="n_seen must be"):
        MomentMemory.from_features(Identity(), 4, x, y, n_seen=n_seen)
    assert MomentMemory.from_features(Identity(), 4, x, y, n_seen=np.int64(7)).n_seen_ == 7


@pytest.mark.parametrize("reg, error", [(True, TypeError), ("1", TypeError), (float("nan"), ValueError)])
def test_memory_reg_arguments_are_checked(problem, reg, error):
    x, y = problem
    memory = MomentMemory(Identity(), 4).update(x, y)
    with pytest.raises(error, match="reg must be"):
        memory.fit_krr(reg)
    with pytest.raises(error, match="reg must be"):
        memory.truncation_error(3, reg)
    assert torch.equal(memory.fit_krr(np.int64(1)).weights_, memory.fit_krr(1.0).weights_)


# -- what x may be --------------------------------------------------------------------------

_WHAT_X_MAY_BE = r"x must be a torch\.Tensor or numpy array"


@pytest.mark.parametrize("x, y", [([[0.0, 1.0], [1.0, 0.0]], [0, 1]), (None, [0, 1]), (None, None), (3.0, None), ("data", None)])
def test_x_of_the_wrong_kind_gets_a_message_saying_what_x_may_be(x, y):
    with pytest.raises(TypeError, match=_WHAT_X_MAY_BE) as info:
        KRR(Identity(), reg=0.1).fit(x, y)
    assert type(x).__name__ in str(info.value) and "(x, y) batches" in str(info.value)
    with pytest.raises(TypeError, match=_WHAT_X_MAY_BE):
        MomentMemory(Identity(), 2).update(x, y)


# -- inputs that carry an autograd graph ----------------------------------------------------------


@pytest.mark.parametrize("solver", ["primal", "svd"])
def test_fit_and_predict_detach_inputs_with_requires_grad(problem, solver):
    x, y = problem
    x32 = x.to(torch.float32)
    leaf = x32.clone().requires_grad_(True)
    reference = KRR(RandomFCNN(40, seed=1), reg=0.5, solver=solver).fit(x32, y)
    model = KRR(RandomFCNN(40, seed=1), reg=0.5, solver=solver).fit(leaf, y)
    assert torch.equal(model.weights_, reference.weights_)
    assert not model.weights_.requires_grad
    scores = model.decision_function(leaf)
    assert not scores.requires_grad and torch.equal(scores, reference.decision_function(x32))
    memory = MomentMemory(RandomFCNN(40, seed=1), 4).update(leaf, y)
    assert torch.equal(memory.features_, MomentMemory(RandomFCNN(40, seed=1), 4).update(x32, y).features_)


def test_requires_grad_soft_targets_are_detached(problem):
    x, y = problem
    targets = torch.nn.functional.one_hot(y, 4).to(torch.float64).requires_grad_(True)
    model = KRR(Identity(), reg=0.5, solver="primal").fit(x, targets)
    assert torch.equal(model.weights_, KRR(Identity(), reg=0.5, solver="primal").fit(x, y).weights_)


# -- 1.1: one target column ---------------------------------------------------------------


@pytest.mark.parametrize("as_numpy", [False, True])
def test_an_integer_label_column_is_refused_not_taken_as_one_target(problem, as_numpy):
    x, y = problem
    column = y[:, None].numpy() if as_numpy else y[:, None]
    with pytest.raises(ValueError, match=r"shape \(300, 1\) with integer dtype.*y\.ravel\(\)"):
        KRR(RandomFCNN(40), reg=1e-3).fit(x, column)
    with pytest.raises(ValueError, match=r"shape \(300, 1\) with integer dtype"):
        MomentMemory(RandomFCNN(40), n_classes=1).update(x, column)
    with pytest.raises(ValueError, match=r"y_val has shape \(300, 1\) with integer dtype"):
        KRR(Identity(), reg="auto").fit(x, y, eval_set=(x, column))


def test_a_float_target_column_is_a_regression_without_classes(problem, naive_ridge, rel_err):
    x, y = problem
    target = (x[:, :1] - 0.5 * x[:, 1:2]).contiguous()
    model = KRR(Identity(), reg=0.3).fit(x, target)
    assert model.n_classes_ == 1
    assert rel_err(model.weights_, naive_ridge(x, target, 0.3)) < 1e-10
    assert model.decision_function(x).shape == (300, 1)
    with pytest.raises(ValueError, match="one target column.*decision_function"):
        model.predict(x)
    with pytest.raises(ValueError, match="one target column"):
        model.score(x, target)
    memory = MomentMemory(Identity(), n_classes=1).update(x, target)
    assert rel_err(memory.fit_krr(0.3).weights_, model.weights_) < 1e-10


def test_reg_auto_refuses_a_single_target_column(problem):
    x, y = problem
    target = x[:, :1].contiguous()
    with pytest.raises(ValueError, match='reg="auto" picks lambda by validation accuracy.*y has one target column'):
        KRR(Identity(), reg="auto").fit(x, target)
    with pytest.raises(ValueError, match='reg="auto".*y_val has one target column'):
        KRR(Identity(), reg="auto").fit([(x, target)], eval_set=(x, target))


@pytest.mark.parametrize("n_classes", [None, 1])
def test_labels_of_a_single_class_are_refused(problem, n_classes):
    x, _ = problem
    zeros = torch.zeros(300, dtype=torch.int64)
    with pytest.raises(ValueError, match="class labels need at least 2 classes"):
        KRR(Identity(), reg=0.1, n_classes=n_classes).fit(x, zeros)
    with pytest.raises(ValueError, match="class labels need at least 2 classes"):
        MomentMemory(Identity(), n_classes=1).update(x, zeros)


# -- 2.3: label checks cost O(n) whatever the values -----------------------------------------------


@pytest.mark.parametrize("n_classes, message", [(None, "class label 1000000000000 but only 100 samples"), (10, "out of range for n_classes=10")])
def test_a_huge_label_is_refused_before_anything_of_its_size_is_allocated(make_problem, n_classes, message):
    # bincount or one_hot over 10**12 classes would need terabytes: the error must come first.
    x, y = make_problem(n=100, d=8, k=4)
    y = y.clone()
    y[0] = 10**12
    with pytest.raises(ValueError, match=message):
        KRR(Identity(), reg=0.1, n_classes=n_classes).fit(x, y)
    with pytest.raises(ValueError, match=message):
        KRR(Identity(), reg=0.1, n_classes=n_classes).fit(x.numpy(), y.numpy())
    with pytest.raises(ValueError, match="out of range for n_classes=10"):
        MomentMemory(Identity(), n_classes=10).update(x, y)
    with pytest.raises(ValueError, match="out of range for n_classes=10"):
        KRR(Identity(), reg=0.1, n_classes=10).fit([(x, y)])


def test_labels_of_n_samples_with_a_label_of_n_are_refused_as_a_gap(make_problem):
    x, y = make_problem(n=10, d=4, k=2)
    y = y.clone()
    y[3] = 10
    with pytest.raises(ValueError, match="class label 10 but only 10 samples"):
        KRR(Identity(), reg=0.1).fit(x, y)
    y[3] = 9  # n classes from n samples is still possible in principle: the gap check names the missing ones
    with pytest.raises(ValueError, match=r"no sample of class\(es\) \[2, 3, 4"):
        KRR(Identity(), reg=0.1).fit(x, y)


# -- 1.3: features that overflow ------------------------------------------------------------------


def test_predicting_on_inputs_whose_features_overflow_raises(problem):
    x, y = problem
    model = KRR(RandomFCNN(40, seed=1), reg=1.0, chunk_size=7).fit(x, y)
    huge = x.to(torch.float32).clone()
    huge[9] = 3e38
    with pytest.raises(ValueError, match=r"features of x are not finite \(NaN or Inf, first at row 9\).*float64"):
        model.predict(huge)
    with pytest.raises(ValueError, match="features of x are not finite"):
        model.decision_function(huge)
    # The same values in float64 are representable all the way through: no error.
    assert model.predict(huge.to(torch.float64)).shape == (300,)


@pytest.mark.parametrize("solver", ["svd", "primal"])
def test_fitting_on_inputs_whose_features_overflow_raises_cleanly(problem, solver, capfd):
    x, y = problem
    huge = torch.full((20, 40), 3e38, dtype=torch.float32)
    labels = torch.arange(20) % 2
    with pytest.raises(ValueError, match=r"features of x are not finite \(NaN or Inf, first at row 0\)"):
        KRR(RandomFCNN(40), reg=1.0, solver=solver).fit(huge, labels)
    # No LAPACK failure reached: nothing printed by the math library either.
    assert capfd.readouterr().err == ""
    with pytest.raises(ValueError, match=r"features of x_val are not finite"):
        KRR(RandomFCNN(40), reg="auto", solver=solver).fit(
            x.to(torch.float32), y, eval_set=(torch.full((8, 40), 3e38), torch.arange(8) % 4)
        )


def test_streamed_and_memory_features_that_overflow_raise(problem):
    x, y = problem
    x32 = x.to(torch.float32)
    bad = x32.clone()
    bad[4] = 3e38
    with pytest.raises(ValueError, match=r"first at row 104\)"):
        KRR(RandomFCNN(40), reg=1.0, n_classes=4).fit([(x32[:100], y[:100]), (bad[:100], y[:100])])
    # The memory computes features in float64; inputs near the float64 limit overflow there.
    near_max = x.clone()
    near_max[4] = 1e308
    with pytest.raises(ValueError, match=r"features of x are not finite \(NaN or Inf, first at row 4\)"):
        MomentMemory(RandomFCNN(40), n_classes=4).update(near_max, y)



@pytest.mark.parametrize("solver", ["svd", "primal"])
def test_finite_float64_features_whose_squares_overflow_raise(solver):
    # 1e200 is finite, its square is not: the SVD path used to zero those directions and predict class 0.
    x = 1e200 * torch.randn(20, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.arange(20) % 2
    with pytest.raises(ValueError, match=r"too large for float64|non-finite Gram matrix"):
        KRR(Identity(), reg=1.0, solver=solver).fit(x, y)
    memory = MomentMemory(Identity(), 2).update(x, y)
    with pytest.raises(ValueError, match="too large for float64"):
        memory.fit_krr(1.0)

# -- 1.4: Gram and cross moments are float64 sums, whatever the input dtype -------------------------


def _pixels(n: int = 3000, d: int = 64, k: int = 10) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """uint8 pixels (n, d), labels (n,) and soft float64 targets (n, k)."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(n, d), dtype=np.uint8)
    soft = torch.from_numpy(rng.dirichlet(np.ones(k), size=n))
    return pixels, np.arange(n) % k, soft


@pytest.mark.parametrize("targets", ["labels", "soft"])
def test_identity_primal_fit_on_uint8_and_float32_matches_float64_inputs(rel_err, targets):
    # Identity features of uint8 pixels are exact in float32, so any difference comes from the sums;
    # float32 sums of 3000 squared pixels (~2e8) round at ~1e-7 and moved the weights by ~1e-5.
    pixels, labels, soft = _pixels()
    y = labels if targets == "labels" else soft
    fit = lambda x, solver="primal": KRR(Identity(), reg=1.0, solver=solver, chunk_size=1000).fit(x, y).weights_  # noqa: E731
    reference = fit(pixels.astype(np.float64))
    for x in (pixels, pixels.astype(np.float32), torch.from_numpy(pixels)):
        assert rel_err(fit(x), reference) < 1e-10
    assert rel_err(fit(pixels, "svd"), reference) < 1e-10


def test_fcnn_primal_fit_on_uint8_matches_the_svd_of_the_same_float32_features(rel_err):
    # Both solvers see the same float32 features; only the primal sums them into a Gram.
    pixels, labels, _ = _pixels()
    fmap = RandomFCNN(64, seed=0)
    primal = KRR(fmap, reg=1.0, solver="primal", chunk_size=1000).fit(pixels, labels).weights_
    svd = KRR(fmap, reg=1.0, solver="svd").fit(pixels, labels).weights_
    assert rel_err(primal, svd) < 1e-9
    # Against float64 inputs only the float32 rounding of the features themselves remains.
    assert rel_err(primal, KRR(fmap, reg=1.0, solver="primal").fit(pixels.astype(np.float64), labels).weights_) < 1e-5


# -- 2.5: feature maps built from numpy integers -----------------------------------------------------

_NUMPY_BUILT = {
    "fcnn": lambda: RandomFCNN(np.int64(8), widths=[np.int64(8), np.int32(6)], negative_slope=np.float32(0.5), seed=np.int64(3)),
    "rff": lambda: RandomFourier(np.int64(8), np.int64(6), sigma=np.float64(2.0), seed=np.uint8(1)),
    "linear": lambda: RandomLinear(np.int64(8), widths=(np.int64(6),), seed=np.int64(2)),
    "identity": lambda: Identity(np.int64(8)),
    "conv": lambda: RandomConv((np.int64(1), np.int64(4), np.int64(4)), channels=np.int64(4), seed=np.int64(1)),
}


@pytest.mark.parametrize("name", list(_NUMPY_BUILT))
def test_feature_maps_built_from_numpy_numbers_have_json_specs_that_rebuild_them(name):
    fmap = _NUMPY_BUILT[name]()
    spec = fmap.spec()
    text = json.dumps(spec)  # a numpy integer in the spec would make this (and save) fail
    rebuilt = from_spec(json.loads(text))
    assert rebuilt.spec() == spec
    x = torch.randn(5, fmap.in_features, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(rebuilt(x), fmap(x))


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: RandomFCNN(True), TypeError, "in_features must be an integer, got True"),
        (lambda: RandomFCNN(8, widths=[8, 2.5]), TypeError, r"widths\[1\] must be an integer, got 2.5"),
        (lambda: RandomFCNN(8, widths="8"), ValueError, "widths must be a non-empty sequence"),
        (lambda: RandomFCNN(8, seed=1.5), TypeError, "seed must be an integer, got 1.5"),
        (lambda: RandomFCNN(8, negative_slope="0.1"), TypeError, "negative_slope must be a real number"),
        (lambda: RandomFourier(8, sigma=None), TypeError, "sigma must be a real number, got None"),
        (lambda: RandomFourier(8, out_features=0), ValueError, "out_features must be >= 1, got 0"),
        (lambda: RandomLinear(8.0), TypeError, "in_features must be an integer, got 8.0"),
        (lambda: Identity(True), TypeError, "in_features must be an integer, got True"),
        (lambda: RandomConv((1, 4, 4), seed=True), TypeError, "seed must be an integer, got True"),
    ],
)
def test_feature_map_arguments_are_checked(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_from_weights_checks_its_arguments(problem):
    x, y = problem
    fitted = KRR(Identity(), reg=0.1).fit(x, y)
    weights = fitted.weights_.clone()
    weights[1, 3] = float("nan")
    with pytest.raises(ValueError, match="weights contain NaN or Inf"):
        KRR.from_weights(Identity(), weights, 0.1, n_features_in=40, n_samples=300)
    with pytest.raises(TypeError, match="reg must be a real number, got True"):
        KRR.from_weights(Identity(), fitted.weights_, True, n_features_in=40, n_samples=300)
    with pytest.raises(ValueError, match="n_samples must be >= 1, got 0"):
        KRR.from_weights(Identity(), fitted.weights_, 0.1, n_features_in=40, n_samples=0)
    with pytest.raises(TypeError, match="n_features_in must be an integer, got 40.0"):
        KRR.from_weights(Identity(), fitted.weights_, 0.1, n_features_in=40.0, n_samples=300)
    rebuilt = KRR.from_weights(Identity(), fitted.weights_, np.float64(0.1), n_features_in=np.int64(40), n_samples=np.int64(300))
    assert type(rebuilt.reg_) is float and type(rebuilt.n_features_in_) is int and type(rebuilt.n_samples_) is int
    assert torch.equal(rebuilt.predict(x), fitted.predict(x))
