"""Label-only distillation (Chen, Huang & Weng 2024, Theorem 4.2; theory.md section 5).

The distilled points X_S are fixed (real points, random points, any points a
user supplies); only their targets are chosen. Samples are rows: with
Phi_S = phi(X_S) (m, p), R = phi_{reg_s}(X_S)^+ (m, p) its regularised
pseudo-inverse (``distill.regularized_pinv``) and W (k, p) the teacher,

    T_S = (W R^+)^T          (m, k)     the least-squares targets,
    W_S = T_S^T R = W R^+ R,
    ||W_S - W||_F = ||W (R^+ R - I_p)||_F.

R^+ R is the orthogonal projector onto the span of the rows of Phi_S, so the
targets are exact (W_S = W) when phi(X_S) has rank p (which needs m >= p; in
LRR m >= d), and more generally whenever every row of W lies in that span.
At reg_s = 0, R^+ = Phi_S^T and T_S = Phi_S W^T: the teacher's own scores on
X_S.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import torch

from ._solvers import pinv, rank_tol
from ._validation import as_samples, image_shape_of, to_tensor
from .distill import RECOVERY_TOLERANCE, _version, refit_error, regularized_pinv
from .distilled_set import DistilledSet
from .krr import KRR


def label_recovery_error(features: torch.Tensor, weights: torch.Tensor, reg_s: float = 0.0) -> float:
    """||W (R^+ R - I_p)||_F / ||W||_F, the relative error of the least-squares labels (Theorem 4.2).

    ``features`` are phi(X_S) (m, p), ``weights`` W (k, p); R = phi_{reg_s}(X_S)^+.
    """
    features = features.to(torch.float64)
    weights = weights.to(features)
    inverse = regularized_pinv(features, float(reg_s))
    residual = weights @ (pinv(inverse) @ inverse) - weights
    return float(torch.linalg.norm(residual) / torch.linalg.norm(weights))


def distill_labels(
    x_s: Any,
    teacher: KRR,
    *,
    reg_s: float = 0.0,
    dataset: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> DistilledSet:
    """Choose only the targets of fixed points ``x_s`` so that KRR on them approximates (or equals) the teacher.

    Parameters
    ----------
    x_s : tensor or array of shape (m, d) or (m, C, H, W)
        The fixed points, in the teacher's input space.
    teacher : KRR
        A fitted model; its ``feature_map_`` and ``weights_`` are used.
    reg_s : float
        lambda_S >= 0 of the distilled model.
    dataset, mean, std
        Recorded in the DistilledSet (``mean``/``std`` to un-normalise images).

    Returns
    -------
    DistilledSet
        ``y`` the least-squares (soft) targets T_S = (W phi_{reg_s}(X_S))^T,
        ``labels`` their argmax, ``reg = reg_s``. The provenance holds
        ``method="label-only"``, ``predicted_error`` (the Theorem 4.2 formula
        ||W (R^+ R - I)|| / ||W||), ``recovery_error`` (measured on the KRR
        refitted on the set), ``exact`` (recovery error <= 1e-6),
        ``feature_rank`` and ``m``, ``p``. Exactness is guaranteed when
        rank phi(X_S) = p (m >= p); for m < p the targets are only the
        least-squares ones and the errors report how far W_S is from W.
    """
    start = time.perf_counter()
    if not isinstance(teacher, KRR):
        raise TypeError(f"teacher must be a distillmem KRR, got {type(teacher).__name__}")
    if not hasattr(teacher, "weights_"):
        raise ValueError("teacher must be a fitted KRR: call teacher.fit(x, y) first")
    if isinstance(reg_s, bool) or not (isinstance(reg_s, (int, float, np.floating, np.integer)) and np.isfinite(reg_s) and reg_s >= 0):
        raise ValueError(f"reg_s must be a finite float >= 0, got {reg_s!r}")
    reg_s = float(reg_s)
    xs = as_samples(x_s, name="x_s")
    if xs.shape[1] != teacher.n_features_in_:
        raise ValueError(f"x_s has {xs.shape[1]} features, the teacher was fitted on {teacher.n_features_in_}")
    points = to_tensor(xs, torch.device("cpu"), name="x_s").to(torch.float64)
    fmap = teacher.feature_map_.to(torch.device("cpu"))
    fmap.check_input(points)
    weights = teacher.weights_.to(torch.float64).cpu()
    k, p = weights.shape

    features = fmap(points).to(torch.float64)
    inverse = regularized_pinv(features, reg_s)  # (m, p)
    targets = (weights @ pinv(inverse)).T  # (m, k)
    predicted = label_recovery_error(features, weights, reg_s)
    singular = torch.linalg.svdvals(features)
    top = float(singular[0])
    feature_rank = int((singular > rank_tol(features, top)).sum()) if top > 0 else 0

    error = refit_error(fmap, points, targets, reg_s, weights, solver="svd")
    exact = bool(error <= RECOVERY_TOLERANCE)
    if not exact and feature_rank == p:
        warnings.warn(
            f"phi(x_s) has full rank p={p} but the refitted weights differ: relative error {error:.3g}",
            stacklevel=2,
        )
    image_shape = image_shape_of(x_s)
    return DistilledSet(
        x=points,
        y=targets,
        labels=targets.argmax(dim=1),
        feature_map_spec=fmap.spec(),
        reg=reg_s,
        image_shape=image_shape,
        mean=mean,
        std=std,
        provenance={
            "method": "label-only",
            "dataset": dataset,
            "n": teacher.n_samples_,
            "m": int(points.shape[0]),
            "p": int(p),
            "feature_rank": feature_rank,
            "teacher_reg": teacher.reg_,
            "reg_s": reg_s,
            "predicted_error": predicted,
            "recovery_error": error,
            "exact": exact,
            "seconds": time.perf_counter() - start,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "distillmem_version": _version(),
        },
    )
