"""Gaussian-mechanism distillation for linear ridge regression (Chen, Huang & Weng 2024, Theorem 6.2).

Samples are rows: X (n, d) the private inputs, T (n, k) their targets,
W (k, d) the least-squares model W = T^T (X^T)^+ (lambda = 0), distilled
one-hot targets T_S (m, k), Y = T_S^T, P = Y^+ Y. The distilled set is

    D   = Y^+ W + (I_m - P) Z,   Z_ij ~ N(0, sigma^2)      (m, d)
    X_S = pinv(D)^T                                         (m, d)

so KRR at lambda_S = 0 on (X_S, T_S) gives Y D = W exactly, whatever Z is:
the noise only changes the points, never the model (docs/math.md §8.3).
See :func:`distill_private` for the assumptions and for what the guarantee
does and does not cover.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from ._closed_form import (
    build_set,
    check_ipc,
    class_interleaved_labels,
    one_hot,
    record,
    refit_error,
    target_features,
    warn_if_inexact,
)
from ._solvers import pinv, rank_tol
from ._validation import as_samples, as_targets, check_int, check_real, resolve_device, to_tensor
from .distilled_set import DistilledSet
from .features import Identity

#: The Gaussian-mechanism constant used: sigma = C sqrt(ln(1.25/delta)) Delta' / epsilon with
#: C = 2 sqrt(2) (the paper prints 2; the textbook mechanism with sensitivity 2B/sigma_0^2 gives 2 sqrt(2)).
NOISE_CONSTANT = 2.0 * math.sqrt(2.0)
#: Without a user-supplied sigma_0, sigma_0 = SIGMA_0_FRACTION * sigma_min(X).
SIGMA_0_FRACTION = 0.99
#: Rows of I - P with a smaller norm count as zero (no noise can reach them).
_PROJECTOR_TOL = 1e-12


def privacy_row_norms(targets_s: Any, targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Per distilled row i: ||[Y_S^+]_i Y||_2 and ||[I_m - Y_S^+ Y_S]_i||_2, both of shape (m,).

    ``targets_s`` (m, k) are the distilled targets (Y_S = targets_s^T) and
    ``targets`` (n, k) the original ones (Y = targets^T). For balanced
    one-hot Y_S with ``ipc`` points per class these are sqrt(n_c) / ipc
    (n_c the size of row i's class) and sqrt(1 - 1/ipc).
    """
    ts = torch.as_tensor(targets_s, dtype=torch.float64)
    t = torch.as_tensor(targets, dtype=torch.float64)
    if ts.ndim != 2 or t.ndim != 2 or ts.shape[1] != t.shape[1]:
        raise ValueError(f"targets_s (m, k) and targets (n, k) must share k; got {tuple(ts.shape)}, {tuple(t.shape)}")
    y_pinv = pinv(ts.T)  # (m, k)
    # ||[Y^+]_i Y||^2 = [Y^+]_i (Y Y^T) [Y^+]_i^T, without forming the (m, n) product.
    signal = ((y_pinv @ (t.T @ t)) * y_pinv).sum(dim=1).clamp_min(0).sqrt()
    projector = torch.eye(ts.shape[0], dtype=torch.float64) - y_pinv @ ts.T
    return signal, torch.linalg.norm(projector, dim=1)


def gaussian_noise_scale(
    targets_s: Any,
    targets: Any,
    *,
    epsilon: float,
    delta: float,
    norm_bound: float,
    sigma_0: float,
) -> float:
    """sigma = max_i 2 sqrt(2) sqrt(ln(1.25/delta)) B ||[Y_S^+]_i Y|| / (sigma_0^2 epsilon ||[I - P]_i||).

    Theorem 6.2 with the constant 2 sqrt(2) (docs/math.md §8.3): row i of
    Y_S^+ W has sensitivity ||[Y_S^+]_i Y|| * 2B / sigma_0^2 when one row of X
    changes, and the noise on row i of D has standard deviation
    sigma ||[I - P]_i||. Raises ValueError when a row that carries signal gets
    no noise (||[I - P]_i|| = 0, e.g. ipc = 1).
    """
    _check_privacy_params(epsilon, delta, norm_bound)
    if not (np.isfinite(sigma_0) and sigma_0 > 0):
        raise ValueError(f"sigma_0 must be a finite float > 0, got {sigma_0!r}")
    signal, projector = privacy_row_norms(targets_s, targets)
    deaf = (projector <= _PROJECTOR_TOL) & (signal > 0)
    if bool(deaf.any()):
        rows = deaf.nonzero().flatten().tolist()
        raise ValueError(
            f"distilled rows {rows[:10]} get no noise: ||[I - Y_S^+ Y_S]_i|| = 0 (every point of its class "
            "is pinned by the labels, as with ipc=1), so they cannot be made private; use ipc >= 2"
        )
    live = signal > 0
    if not bool(live.any()):
        return 0.0
    ratio = float((signal[live] / projector[live]).max())
    return NOISE_CONSTANT * math.sqrt(math.log(1.25 / delta)) * norm_bound * ratio / (sigma_0**2 * epsilon)


def clip_rows(x: torch.Tensor, norm_bound: float) -> tuple[torch.Tensor, int]:
    """Rows scaled to norm <= norm_bound (rows already inside are unchanged), and how many were clipped."""
    norms = torch.linalg.norm(x, dim=1, keepdim=True)
    factor = (norm_bound / norms).clamp(max=1.0)  # a zero row gives inf -> 1
    return x * factor, int((norms > norm_bound).sum())


def distill_private(
    x: Any,
    y: Any,
    *,
    ipc: int = 10,
    epsilon: float,
    delta: float,
    norm_bound: float,
    sigma_0: float | None = None,
    seed: int = 0,
    n_classes: int | None = None,
    device: str | torch.device | None = None,
    dataset: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> DistilledSet:
    """Distil (x, y) for linear ridge regression with Gaussian noise calibrated by Theorem 6.2.

    Mechanism (samples are rows):

    1. clip every row of x to norm <= ``norm_bound`` = B;
    2. fit W = T^T (X^T)^+ on the clipped data (identity map, lambda = 0)
       from a QR factorisation (thin SVD when n < d);
    3. sigma_min = the smallest of the min(n, d) singular values of the clipped
       X; it must be > 0 (ValueError otherwise). sigma_0 = ``sigma_0`` if
       given (it must be < sigma_min), else 0.99 * sigma_min;
    4. draw Z (m, d) with i.i.d. N(0, sigma^2) entries,
       sigma = max_i 2 sqrt(2) sqrt(ln(1.25/delta)) B ||[Y_S^+]_i Y|| / (sigma_0^2 epsilon ||[I - P]_i||)
       (:func:`gaussian_noise_scale`). The paper prints the constant 2; this
       uses the larger 2 sqrt(2) of the textbook Gaussian mechanism
       (sigma >= sqrt(2 ln(1.25/delta)) Delta / epsilon with Delta = 2B ||.|| / sigma_0^2),
       as docs/math.md §8.3 explains;
    5. D = Y_S^+ W + (I - P) Z and X_S = pinv(D)^T with balanced, interleaved
       one-hot targets (ipc per class).

    The set is exact: KRR at lambda_S = 0 on it gives back W of the *clipped*
    data, since Y_S pinv(pinv(D)) = Y_S D = W for any Z.

    Assumptions of Theorem 6.2, stated plainly:

    * linear ridge regression (identity feature map) and original lambda = 0;
    * every row has norm <= B: enforced here by clipping, so the model and
      the guarantee are those of the clipped data;
    * sigma_min(X) > sigma_0 for X *and every neighbour* X' (one row of X
      replaced, labels unchanged); a sigma_0 derived from the data, as by
      default, is itself a non-private statistic of X (it is stored in the
      provenance): pass a public ``sigma_0`` for a formal argument;
    * Y_S is independent of X and not a function of the data: only balanced
      one-hot labels are used, never soft labels;
    * epsilon, delta in (0, 1) (enforced; the Gaussian mechanism's
      calibration needs epsilon < 1).

    What is guaranteed: each row of D = X_S^+ (one row per distilled point),
    taken on its own, is (epsilon, delta)-DP with respect to X. The released
    points X_S = pinv(D)^T are computed from all m rows together, so a
    guarantee for a point or for the whole set needs composition over the m
    rows, which the theorem does not cover. And the rows are not independent:
    the noise lies in Range(I - P), so P D = Y_S^+ W exactly and the set as a
    whole gives back W = Y_S D exactly. **The model W is not private**; only
    the individual rows are noised. ipc = 1 cannot be private at all
    (I - P = 0). Large noise does not make the points look like noise when
    m < d: pinv inverts magnitudes, so in the d - (m - k) directions the
    noise rows leave free the small signal Y_S^+ W dominates X_S, whatever
    sigma (experiments/privacy_tradeoff.py measures this on MNIST).

    Parameters
    ----------
    x : (n, d) or (n, C, H, W) tensor or array
    y : (n,) integer labels or (n, k) targets
    ipc : int
        Points per class, >= 2 (default 10).
    epsilon, delta : float
        Privacy parameters, both in (0, 1).
    norm_bound : float
        B > 0, the clipping bound on row norms.
    sigma_0 : float, optional
        A public lower bound 0 < sigma_0 < sigma_min(clipped X).
    seed : int
        Seeds Z.
    n_classes : int, optional
        k for integer labels.
    device : str or torch.device, optional
        Where the factorisations run; the set comes back on the CPU.
    dataset, mean, std
        Recorded in the DistilledSet.

    There is no ``teacher``: the mechanism fits its own W on the clipped
    data, which is what the guarantee is about.

    Returns
    -------
    DistilledSet
        Identity map, reg = 0, provenance ``method="private"`` with
        ``extras`` ``epsilon``, ``delta``, ``norm_bound``, ``sigma`` (the
        standard deviation of Z actually drawn), ``sigma_0``,
        ``sigma_0_source`` ("data" or "user") and ``noise_constant``.
    """
    start = time.perf_counter()
    _check_privacy_params(epsilon, delta, norm_bound)
    ipc = check_ipc(ipc)
    if ipc == 1:
        raise ValueError(
            "ipc=1 cannot be private: with one point per class I - Y_S^+ Y_S = 0, so the noise Z never "
            "enters D and the points are W's pseudo-inverse itself; use ipc >= 2"
        )
    seed = check_int(seed, "seed")
    device = resolve_device(device)
    xs = as_samples(x)
    targets, k = as_targets(y, xs.shape[0], n_classes)
    data = to_tensor(xs, device).to(torch.float64)
    clipped, _ = clip_rows(data, float(norm_bound))

    singular, weights = _spectrum_and_lstsq(clipped, targets.to(device))
    sigma_min = float(singular[-1])
    if not sigma_min > rank_tol(clipped, float(singular[0])):
        raise ValueError(
            f"Theorem 6.2 needs sigma_min(X) > sigma_0 > 0, but the clipped X ({clipped.shape[0]} x {clipped.shape[1]}) "
            f"is rank deficient: its smallest singular value is {sigma_min:.3g} (largest {float(singular[0]):.3g}). "
            "Remove constant or collinear features or project the data to fewer dimensions first"
        )
    if sigma_0 is None:
        sigma_0_used, source = SIGMA_0_FRACTION * sigma_min, "data"
    else:
        sigma_0_used, source = check_real(sigma_0, "sigma_0"), "user"
        if not 0 < sigma_0_used < sigma_min:
            raise ValueError(f"sigma_0 must satisfy 0 < sigma_0 < sigma_min(X) = {sigma_min:.6g}, got {sigma_0!r}")

    targets_s = one_hot(class_interleaved_labels(k, ipc), k)
    sigma = gaussian_noise_scale(
        targets_s, targets, epsilon=epsilon, delta=delta, norm_bound=float(norm_bound), sigma_0=sigma_0_used
    )
    # Identity map: D's pseudo-inverse rows are the points themselves.
    solved = target_features(Identity(), weights, ipc, gen=torch.Generator().manual_seed(seed), noise_std=sigma)
    error = refit_error(Identity(), solved.features, solved.targets, 0.0, weights, solver="svd", device=device)
    warn_if_inexact(error)
    provenance = record(
        "private", start, dataset=dataset, n=int(clipped.shape[0]), ipc=ipc, seed=seed, init="noise",
        teacher_reg=0.0, reg_s=0.0, recovery_error=error,
        extras={
            "epsilon": float(epsilon),
            "delta": float(delta),
            "norm_bound": float(norm_bound),
            "sigma": sigma,
            "sigma_0": sigma_0_used,
            "sigma_0_source": source,
            "noise_constant": NOISE_CONSTANT,
        },
    )
    return build_set(
        solved.features, solved.targets, solved.labels, Identity(), 0.0, provenance, like=x, mean=mean, std=std
    )


def _spectrum_and_lstsq(x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The min(n, d) singular values of x (n, d), descending, and W = T^T (x^T)^+ (k, d) if x has full rank.

    For n >= d a Householder QR x = Q R (Q applied implicitly, never formed)
    and the SVD of the d x d factor R = U S V^T give both: the singular values
    of R are those of x, and W^T = V S^-1 U^T (Q^T T)[:d]. This is backward
    stable like a thin SVD of x at about a third of its cost. For n < d the
    thin SVD of x is used. W is only meaningful when every singular value is > 0.
    """
    n, d = x.shape
    if n < d:
        left, singular, right_t = torch.linalg.svd(x, full_matrices=False)
        return singular, ((right_t.T / singular) @ (left.T @ targets)).T
    packed, tau = torch.geqrf(x)
    q_t_targets = torch.ormqr(packed, tau, targets, left=True, transpose=True)[:d]
    left, singular, right_t = torch.linalg.svd(torch.triu(packed[:d]))
    return singular, ((right_t.T / singular) @ (left.T @ q_t_targets)).T


def _check_privacy_params(epsilon: float, delta: float, norm_bound: float) -> None:
    for name, value in (("epsilon", epsilon), ("delta", delta), ("norm_bound", norm_bound)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a float, got {value!r}")
    if not (np.isfinite(epsilon) and 0 < epsilon < 1):
        raise ValueError(
            f"epsilon must be in (0, 1), got {epsilon!r}: Theorem 6.2 assumes epsilon, delta in (0, 1) "
            "(the Gaussian mechanism's calibration needs epsilon < 1)"
        )
    if not (np.isfinite(delta) and 0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}: Theorem 6.2 assumes epsilon, delta in (0, 1)")
    if not (np.isfinite(norm_bound) and norm_bound > 0):
        raise ValueError(f"norm_bound must be a finite float > 0, got {norm_bound!r}")
