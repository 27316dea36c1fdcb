"""Hostile and edge inputs at the engine's public boundary: each gets a correct result or a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distillmem._validation import check_int, check_real

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
