"""Checks applied once, at the public boundary; solvers get clean tensors."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray

_FLOAT_DTYPES = (torch.float32, torch.float64)
# float32 holds every value of these exactly (24-bit significand).
_SMALL_EXACT_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.uint16, torch.float16, torch.bfloat16)


def check_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """``value`` as a plain int: Python or numpy integers only (bool is refused), at least ``minimum``."""
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point() and not value.is_complex():
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_real(
    value: Any, name: str, *, minimum: float | None = None, positive: bool = False, allow_inf: bool = False
) -> float:
    """``value`` as a plain float: a real number (int, float, numpy or 0-d tensor; bool refused),
    never NaN, infinite only with ``allow_inf``, at least ``minimum``, > 0 with ``positive``."""
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_complex() and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def is_array(x: Any) -> bool:
    return isinstance(x, (torch.Tensor, np.ndarray))


def as_samples(x: Any, name: str = "x") -> ArrayLike:
    """View ``x`` of shape (n, ...) as (n, d) without copying (memmaps stay on disk)."""
    if not is_array(x):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    # Checked on the dtype alone, so a memmap is not read: complex values would lose
    # their imaginary part and strings or objects cannot become features.
    real = not x.dtype.is_complex if isinstance(x, torch.Tensor) else x.dtype.kind in "biuf"
    if not real:
        raise ValueError(f"{name} must hold real numbers (float, integer or bool), found dtype {x.dtype}")
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); at least one sample is needed")
    if x.ndim == 1:
        raise ValueError(f"{name} must have shape (n, d) or (n, C, H, W), found 1-D shape {tuple(x.shape)}")
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[1] == 0:
        raise ValueError(f"{name} has no features (shape {tuple(x.shape)})")
    return flat


def to_tensor(x: ArrayLike, device: torch.device, *, first_row: int = 0, name: str = "x") -> torch.Tensor:
    """A float chunk on ``device``, detached from any autograd graph: float32/float64 kept,
    8- and 16-bit integers and bools to float32 (exact), other dtypes to float64; NaN/Inf rejected."""
    # np.array copies, so read-only memmaps become ordinary writable chunks.
    t = torch.from_numpy(np.array(x)) if isinstance(x, np.ndarray) else x.detach()
    if t.dtype not in _FLOAT_DTYPES:
        t = t.to(torch.float32 if t.dtype in _SMALL_EXACT_DTYPES else torch.float64)
    t = t.to(device)
    bad = first_nonfinite_row(t)
    if bad is not None:
        raise ValueError(f"{name} contains NaN or Inf (first at row {bad + first_row})")
    return t


def first_nonfinite_row(t: torch.Tensor) -> int | None:
    """The first row of ``t`` (n, ...) holding NaN or Inf, or None."""
    # One reduction is far cheaper than an elementwise check; a non-finite sum
    # (NaN/Inf, or an overflow of large finite values) triggers the full check.
    if bool(torch.isfinite(t.sum())):
        return None
    finite = torch.isfinite(t.reshape(t.shape[0], -1)).all(dim=1)
    return None if bool(finite.all()) else int((~finite).nonzero()[0, 0])


def check_data_args(x: Any, y: Any) -> bool:
    """Whether ``x`` is streamed (an iterable of (x, y) batches, ``y`` None) rather than an array with ``y``."""
    if is_array(x):
        if y is None:
            raise ValueError("y is required when x is an array")
        return False
    if y is not None:
        raise TypeError(
            f"x must be a torch.Tensor or numpy array of shape (n, d) or (n, C, H, W) when y is given, got "
            f"{type(x).__name__}; an iterable of (x, y) batches is passed alone, with y=None"
        )
    if x is None or isinstance(x, (str, bytes)) or not hasattr(x, "__iter__"):
        raise TypeError(
            "x must be a torch.Tensor or numpy array of shape (n, d) or (n, C, H, W) (with labels y), "
            f"or an iterable of (x, y) batches (with y=None), got {type(x).__name__}"
        )
    return True


def as_targets(y: Any, n: int, n_classes: int | None, name: str = "y") -> tuple[torch.Tensor, int]:
    """Targets of shape (n, k) in float64 from integer labels (n,) or a target matrix (n, k).

    Integer labels need at least two classes; with ``n_classes=None`` they must
    cover 0..max(y) without gaps. A matrix (n, 1) is one regression target: it
    must be float, since an integer column is almost always labels of the wrong shape.
    """
    if not is_array(y):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(y).__name__}")
    # np.array copies: a read-only memmap of labels becomes an ordinary array (small: n x k at most).
    t = torch.from_numpy(np.array(y)) if isinstance(y, np.ndarray) else y.detach().cpu()
    if t.ndim == 0:
        raise ValueError(f"{name} must have shape (n,) of class labels or (n, k) of targets, found a scalar")
    if t.shape[0] != n:
        raise ValueError(f"x and {name} have different numbers of samples: {n} != {t.shape[0]}")
    if t.ndim == 2:
        if t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"{name} of shape (n, k) must hold real targets, found dtype {t.dtype}")
        if t.shape[1] == 1 and not t.is_floating_point():
            raise ValueError(
                f"{name} has shape ({n}, 1) with integer dtype {t.dtype}: class labels must have shape (n,) "
                f"(pass {name}.ravel() or {name}[:, 0]); a single regression target must be a float (n, 1) matrix"
            )
        t = t.to(torch.float64)
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or Inf")
        if n_classes is not None and t.shape[1] != n_classes:
            raise ValueError(f"{name} has {t.shape[1]} target columns but n_classes={n_classes}")
        return t, t.shape[1]
    if t.ndim != 1:
        raise ValueError(f"{name} must have shape (n,) of class labels or (n, k) of targets, found {tuple(t.shape)}")
    if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name} of shape (n,) must hold integer class labels, found dtype {t.dtype}; pass soft targets as (n, k)")
    labels = t.to(torch.int64)
    k = check_labels(labels, n_classes, name)
    return torch.nn.functional.one_hot(labels, k).to(torch.float64), k


def check_labels(labels: torch.Tensor, n_classes: int | None, name: str = "y") -> int:
    """Validate integer labels (n,) and return the number of classes k >= 2, in O(n) whatever the values."""
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise ValueError(f"{name} has a negative class label {low}")
    if n_classes is not None:
        n_classes = check_int(n_classes, "n_classes", minimum=1)
        if high >= n_classes:
            raise ValueError(f"{name} has class label {high}, out of range for n_classes={n_classes}")
    elif high >= labels.shape[0]:
        # n samples cannot cover 0..high without a gap; refusing here keeps bincount O(n).
        raise ValueError(
            f"{name} has class label {high} but only {labels.shape[0]} samples, so some of the classes 0..{high} "
            "have no sample; pass n_classes explicitly if classes may be absent"
        )
    k = high + 1 if n_classes is None else n_classes
    if k < 2:
        raise ValueError(
            f"{name} holds a single class (label 0) and n_classes={n_classes}: class labels need at least 2 classes; "
            "pass n_classes=k if the other classes come later, or a float (n, 1) matrix for one regression target"
        )
    if n_classes is None:
        present = torch.bincount(labels, minlength=k) > 0
        if not bool(present.all()):
            missing = (~present).nonzero().flatten().tolist()
            raise ValueError(
                f"{name} has no sample of class(es) {missing[:10]} in 0..{high}; "
                "pass n_classes explicitly if classes may be absent"
            )
    return k


def image_shape_of(x: Any) -> tuple[int, ...] | None:
    """The per-sample shape (e.g. (C, H, W)) of inputs (n, ...) with more than two dims, else None."""
    if x is None or getattr(x, "ndim", 2) <= 2:
        return None
    return tuple(int(s) for s in x.shape[1:])


def resolve_device(device: str | torch.device | None) -> torch.device:
    dev = torch.device("cpu" if device is None else device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(dev)!r} was requested but CUDA is not available")
    return dev
