"""Hostile and edge inputs at the engine's public boundary: each gets a correct result or a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distillmem import KRR, MomentMemory
from distillmem._validation import check_int, check_real
from distillmem.features import Identity, RandomConv, RandomFCNN, RandomFourier, RandomLinear

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
        ("0.1", TypeError, "reg_grid must be a sequence of numbers"),
        (0.1, TypeError, "reg_grid must be a sequence of numbers"),
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
