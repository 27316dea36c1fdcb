"""Label-only distillation (Chen, Huang & Weng 2024, Theorem 4.2; docs/math.md §5).

The distilled points X_S are fixed (real points, random points, any points a
user supplies); only their targets are chosen. Samples are rows: with
Phi_S = phi(X_S) (m, p), R = phi_{reg_s}(X_S)^+ (m, p) its regularised
pseudo-inverse and W (k, p) the teacher,

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

import torch

from ._closed_form import (
    RECOVERY_TOLERANCE,
    build_set,
    check_reg_s,
    record,
    refit_error,
    regularized_pinv,
    resolve_teacher,
)
from ._solvers import pinv, rank_tol
from ._validation import as_samples, check_int, resolve_device, to_tensor
from .distilled_set import DistilledSet
from .features import FeatureMap
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
    *,
    teacher: KRR | None = None,
    x: Any = None,
    y: Any = None,
    feature_map: FeatureMap | None = None,
    reg: float | str = "auto",
    reg_s: float = 0.0,
    seed: int = 0,
    n_classes: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    dataset: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> DistilledSet:
    """Choose only the targets of fixed points ``x_s`` so that KRR on them approximates (or equals) the teacher.

    Parameters
    ----------
    x_s : tensor or array of shape (m, d) or (m, C, H, W)
        The fixed points, in the teacher's input space.
    teacher : KRR, optional
        A fitted model; its feature map and ``weights_`` are used.
    x, y, feature_map, reg, seed, n_classes, progress
        Without a teacher, one is fitted on (x, y) with these, as in
        :func:`distillmem.distill`.
    reg_s : float
        lambda_S >= 0 of the distilled model.
    device : str or torch.device, optional
        Where the features and solves run; the set comes back on the CPU.
    dataset, mean, std
        Recorded in the DistilledSet (``mean``/``std`` to un-normalise images).

    Returns
    -------
    DistilledSet
        ``y`` the least-squares (soft) targets T_S = (W phi_{reg_s}(X_S))^T,
        ``labels`` their argmax, ``reg = reg_s``. The provenance
        (``method="label_only"``) has ``recovery_error`` (measured on the KRR
        refitted on the set) and ``extras`` ``predicted_error`` (the Theorem
        4.2 formula ||W (R^+ R - I)|| / ||W||), ``exact`` (recovery error
        <= 1e-6), ``feature_rank``, ``m`` and ``p``. Exactness is guaranteed
        when rank phi(X_S) = p (m >= p); for m < p the targets are only the
        least-squares ones and the errors report how far W_S is from W.
    """
    start = time.perf_counter()
    reg_s = check_reg_s(reg_s, allow_bound=False)
    seed = check_int(seed, "seed")
    device = resolve_device(device)
    xs = as_samples(x_s, name="x_s")
    teacher, fmap = resolve_teacher(
        x, y, teacher=teacher, feature_map=feature_map, device=device, reg=reg, seed=seed, n_classes=n_classes,
        progress=progress,
    )
    if xs.shape[1] != teacher.n_features_in_:
        raise ValueError(f"x_s has {xs.shape[1]} features, the teacher was fitted on {teacher.n_features_in_}")
    points = to_tensor(xs, device, name="x_s").to(torch.float64)
    fmap.check_input(points)
    weights = teacher.weights_.to(device)
    k, p = weights.shape

    features = fmap(points).to(torch.float64)
    inverse = regularized_pinv(features, reg_s)  # (m, p)
    targets = (weights @ pinv(inverse)).T  # (m, k)
    predicted = label_recovery_error(features, weights, reg_s)
    singular = torch.linalg.svdvals(features)
    top = float(singular[0])
    feature_rank = int((singular > rank_tol(features, top)).sum()) if top > 0 else 0

    error = refit_error(fmap, points, targets, reg_s, teacher.weights_, solver="svd", device=device)
    exact = bool(error <= RECOVERY_TOLERANCE)
    if not exact and feature_rank == p:
        warnings.warn(
            f"phi(x_s) has full rank p={p} but the refitted weights differ: relative error {error:.3g}",
            stacklevel=2,
        )
    provenance = record(
        "label_only", start, dataset=dataset, n=teacher.n_samples_, teacher_reg=teacher.reg_, reg_s=reg_s,
        recovery_error=error,
        extras={"m": int(points.shape[0]), "p": int(p), "feature_rank": feature_rank, "predicted_error": predicted,
                "exact": exact},
    )
    return build_set(points, targets, targets.argmax(dim=1), fmap, reg_s, provenance, like=x_s, mean=mean, std=std)
