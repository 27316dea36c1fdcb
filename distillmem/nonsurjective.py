"""Distillation for feature maps without an exact preimage (paper sections 5.2 and 7).

- ``distill_deep_linear``: deep linear maps that widen (d < p). When W was
  fitted on this map's features, k points X_S = M^+ W^+ Y_S already suffice
  (theory.md section 7); the range condition is checked.
- ``distill_approximate``: any map, e.g. a frozen backbone wrapped in a
  ``ModuleMap``: target features by Theorem 5.1, an approximate preimage by
  optimisation, then least-squares labels (Theorem 4.2) on the features
  actually reached.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ._solvers import pinv
from ._validation import image_shape_of, resolve_device
from .distill import (
    INITS,
    ROOTS,
    _version,
    class_interleaved_labels,
    features_from_d,
    reference_points,
    refit_error,
    regularized_pinv,
    warn_if_inexact,
)
from .distilled_set import DistilledSet
from .features.linear import RANGE_TOLERANCE, RandomLinear, _is_int
from .features.module import ModuleMap
from .krr import KRR


def distill_deep_linear(
    teacher: Any,
    *,
    ipc: int = 1,
    noise_scale: float = 0.1,
    seed: int = 0,
    tol: float = RANGE_TOLERANCE,
    dataset: str | None = None,
):
    """Distil a KRR model on a deep linear map into k * ipc points, also for expanding maps.

    Samples are rows. With W (k, p) the teacher's weights, M (p, d) the
    composed map, one-hot interleaved targets T_S (m, k), Y = T_S^T and
    P = Y^+ Y, this builds (reg_s = 0, Theorems 5.1 / 5.3, theory.md section 7)

        D = Y^+ W + (I - P) Z P_M      (m, p),   P_M = M M^+,
        Phi_S = pinv(D)^T              (m, p),
        X_S = Phi_S (M^+)^T            (m, d).

    With ipc = 1 (m = k) D = Y^+ W and X_S^T = M^+ W^+ Y, the k-point route;
    larger ipc adds noise Z (``noise_scale * std(Y^+ W) * N(0, 1)``) whose rows
    are projected onto Range(M), so the points are distinct. T_S^T phi_0(X_S)^+
    = Y D = W holds exactly provided every row of D, hence of W, lies in
    Range(M): then X_S (M^T) = Phi_S. That **range condition**
    Range(W^T) ⊆ Range(M) is necessary for any distilled set of any size
    (the rows of a refitted W_S always lie in the span of the features), and
    it holds whenever W is a KRR solution fitted on features of this same
    map. It is checked as ||(I - M M^+) W^T||_F / ||W^T||_F <= ``tol``.

    Parameters
    ----------
    teacher : KRR
        Fitted, with a :class:`RandomLinear` feature map.
    ipc : int
        Points per class, m = k * ipc.
    noise_scale : float
        Scale of Z for ipc > 1.
    seed : int
        Seeds Z.
    tol : float
        Tolerance of the range condition.
    dataset : str, optional
        Recorded in the provenance.

    Returns
    -------
    DistilledSet
        One-hot targets, reg = 0, provenance with ``method="deep-linear"``,
        ``range_residual`` and ``recovery_error`` (||W_S - W|| / ||W|| of the
        KRR refitted on the points).

    Raises
    ------
    ValueError
        If the teacher is unfitted, its map is not a RandomLinear, or the
        range condition fails.
    """

    start = time.perf_counter()
    if not isinstance(teacher, KRR):
        raise TypeError(f"teacher must be a distillmem KRR, got {type(teacher).__name__}")
    if not hasattr(teacher, "weights_"):
        raise ValueError("teacher must be a fitted KRR: call teacher.fit(x, y) first")
    fmap = teacher.feature_map_
    if not isinstance(fmap, RandomLinear):
        raise ValueError(f"distill_deep_linear needs a teacher on a RandomLinear map, got {fmap!r}")
    if not (_is_int(ipc) and ipc >= 1):
        raise ValueError(f"ipc must be an integer >= 1, got {ipc!r}")
    if not noise_scale > 0:
        raise ValueError(f"noise_scale must be > 0, got {noise_scale!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")

    weights = teacher.weights_.to(torch.float64).cpu()
    k = weights.shape[0]
    residual = fmap.range_residual(weights)
    if not residual <= tol:
        raise ValueError(
            "range condition Range(W^T) ⊆ Range(M) fails: ||(I - M M^+) W^T||_F / ||W^T||_F = "
            f"{residual:.3g} > tol={tol:g}. No distilled set of any size gives back W through this "
            f"linear map (rank {fmap.rank} < p={fmap.widths[-1]}); was W fitted on features of this same map?"
        )
    m_mat = fmap.composed.cpu()
    m_pinv = pinv(m_mat)  # (d, p)
    ipc = int(ipc)
    labels = class_interleaved_labels(k, ipc)
    targets = torch.nn.functional.one_hot(labels, k).to(torch.float64)
    y_pinv = pinv(targets.T)  # (m, k)
    d_mat = y_pinv @ weights
    if ipc > 1:
        gen = torch.Generator().manual_seed(int(seed))
        scale = noise_scale * float(d_mat.std())
        free = scale * torch.randn(d_mat.shape, generator=gen, dtype=torch.float64)
        free = (free @ m_pinv.T) @ m_mat.T  # rows projected onto Range(M): Z M^{+T} M^T = Z (M M^+)^T
        d_mat = d_mat + free - y_pinv @ (targets.T @ free)
    features, _ = features_from_d(d_mat, 0.0, "plus")
    points = features @ m_pinv.T

    error = refit_error(fmap, points, targets, 0.0, weights, solver="svd")
    warn_if_inexact(error)

    return DistilledSet(
        x=points,
        y=targets,
        labels=labels,
        feature_map_spec=fmap.spec(),
        reg=0.0,
        provenance={
            "method": "deep-linear",
            "dataset": dataset,
            "n": teacher.n_samples_,
            "ipc": ipc,
            "seed": int(seed),
            "teacher_reg": teacher.reg_,
            "reg_s": 0.0,
            "map_rank": fmap.rank,
            "range_residual": residual,
            "recovery_error": error,
            "seconds": time.perf_counter() - start,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "distillmem_version": _version(),
        },
    )


def distill_approximate(
    x: Any,
    y: Any = None,
    *,
    teacher: Any,
    ipc: int = 10,
    init: str = "real",
    reg_s: float | str = 0.0,
    root: str = "plus",
    soft_labels: bool = True,
    noise_scale: float = 0.1,
    solve_labels: bool = True,
    steps: int | None = None,
    lr: float | None = None,
    optimizer: str | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    dataset: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
):
    """Distil a fitted KRR ``teacher`` whose feature map is not surjective (theory.md section 7).

    1. The Theorem 5.1 target features Phi_S (m, p), as KRRDistiller computes
       them (init "real": Z from ``ipc`` real points per class of (x, y);
       "noise": Z random, x and y may be None).
    2. X_S by optimisation: minimise ||phi(X_S) - Phi_S||^2 (ModuleMap's
       preimage; any other FeatureMap is wrapped in a ModuleMap for this step),
       starting from the real points or from seeded noise.
    3. With ``solve_labels``, the Theorem 4.2 labels on the recovered features
       Phi_hat = phi(X_S): T_S = pinv(Q)^T W^T with Q = phi_{reg_s}(Phi_hat)^+,
       the least-squares minimiser of ||W_S - W||_F for these points.

    Returns a DistilledSet; its provenance has ``feature_residual`` (relative,
    step 2), ``recovery_error`` (relative weight error of the refit on the
    returned set), ``recovery_error_before_labels`` (with the step-1 labels)
    and ``label_step_used`` (False when the step was off, or when the solved
    labels were not better, which happens only at rounding level). The set's
    ``feature_map_spec`` is the teacher map's spec; for a ModuleMap rebuild
    the map with ``ModuleMap.rebuild(spec, module)``.
    """

    start_time = time.perf_counter()
    if teacher is None or not hasattr(teacher, "weights_"):
        raise ValueError("teacher must be a fitted KRR: call teacher.fit(x, y) first")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if root not in ROOTS:
        raise ValueError(f"root must be one of {ROOTS}, got {root!r}")
    if not (isinstance(ipc, (int, np.integer)) and ipc >= 1):
        raise ValueError(f"ipc must be an integer >= 1, got {ipc!r}")
    if not (reg_s == "bound" or (isinstance(reg_s, (int, float)) and np.isfinite(reg_s) and reg_s >= 0)):
        raise ValueError(f'reg_s must be a float >= 0 or "bound", got {reg_s!r}')
    if not noise_scale > 0:
        raise ValueError(f"noise_scale must be > 0, got {noise_scale!r}")
    dev = resolve_device(device)
    fmap = teacher.feature_map_.to(dev)
    solver = fmap if isinstance(fmap, ModuleMap) else ModuleMap(fmap, teacher.n_features_in_, seed=seed)
    weights = teacher.weights_.to(dev)
    k, ipc = weights.shape[0], int(ipc)
    gen = torch.Generator().manual_seed(seed)
    labels = class_interleaved_labels(k, ipc)
    targets = torch.nn.functional.one_hot(labels, k).to(torch.float64).to(dev)
    soft_used = False
    reference = None
    if init == "real":
        if x is None or y is None:
            raise ValueError('init="real" needs the real data x and y as arrays')
        reference = reference_points(x, y, ipc, teacher, gen, dev)
        ref_inverse = regularized_pinv(fmap(reference).to(torch.float64), 0.0 if reg_s == "bound" else float(reg_s))
        if soft_labels:
            soft = pinv(ref_inverse).T @ weights.T
            if int(torch.linalg.matrix_rank(soft)) == k:
                targets, soft_used = soft, True

    # D = Y^+ W + (I - P) Z, then Phi_S from D (Theorem 5.1), as in KRRDistiller.fit.
    y_pinv = pinv(targets.T)
    particular = y_pinv @ weights
    if init == "real":
        free = ref_inverse
    else:
        scale = noise_scale * float(particular.std()) if particular.numel() > 1 else noise_scale
        free = scale * torch.randn(particular.shape, generator=gen, dtype=torch.float64).to(dev)
    free = free - y_pinv @ (targets.T @ free)
    features, reg_used = features_from_d(particular + free, reg_s, root)
    range_scale = fmap.range_scale(features)
    features, targets = features / range_scale, targets / range_scale
    reg_fit = reg_used / range_scale**2

    points, residual = solver.preimage_with_residual(features, init=reference, steps=steps, lr=lr, optimizer=optimizer)
    points = points.to(torch.float64)

    def weight_error(t: torch.Tensor) -> float:
        return refit_error(fmap, points, t, reg_fit, teacher.weights_, device=dev)

    error_before = weight_error(targets)
    error, labels_used = error_before, False
    if solve_labels:
        with torch.no_grad():
            recovered = fmap(points).to(torch.float64)
        q = regularized_pinv(recovered, reg_fit)
        solved = pinv(q).T @ weights.T
        error_solved = weight_error(solved)
        # The least-squares labels cannot be worse except by rounding, when both errors are ~eps.
        labels_used = error_solved <= error_before
        if labels_used:
            targets, error = solved, error_solved
    image_shape = image_shape_of(x)
    return DistilledSet(
        x=points.cpu(),
        y=targets.cpu(),
        labels=labels,
        feature_map_spec=fmap.spec(),
        reg=reg_fit,
        image_shape=image_shape,
        mean=mean,
        std=std,
        provenance={
            "method": "approximate",
            "dataset": dataset,
            "n": teacher.n_samples_,
            "ipc": ipc,
            "init": init,
            "soft_labels": soft_used,
            "seed": int(seed),
            "teacher_reg": teacher.reg_,
            "reg_s": reg_used,
            "root": root,
            "range_scale": range_scale,
            "optimizer": optimizer or solver.optimizer,
            "steps": solver.steps if steps is None else int(steps),
            "feature_residual": residual,
            "label_step": bool(solve_labels),
            "label_step_used": labels_used,
            "recovery_error_before_labels": error_before,
            "recovery_error": error,
            "seconds": time.perf_counter() - start_time,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
