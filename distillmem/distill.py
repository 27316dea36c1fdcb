"""Closed-form distillation (Chen, Huang & Weng 2024, Theorems 4.1 / 5.1, Corollary 4.1.1).

Samples are rows. With W (k, p) the KRR weights, T_S (m, k) the distilled
targets and Y = T_S^T, every D (m, p) of the form

    D = Y^+ W + (I - Y^+ Y) Z

gives features Phi_S (m, p) with T_S^T phi_reg_s(Phi_S)^+ = W: Phi_S = pinv(D)^T
for reg_s = 0, or the singular values of D mapped by the quadratic of
Theorem 4.1 for reg_s > 0. A preimage of Phi_S under phi gives the points.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import torch

from ._solvers import pinv, rank_tol
from ._validation import as_samples, as_targets, check_labels, image_shape_of, is_array, resolve_device, to_tensor
from .distilled_set import DistilledSet
from .features import FeatureMap, Identity
from .krr import KRR

INITS = ("noise", "real")
ROOTS = ("plus", "minus")
#: Above this relative weight error a distilled set is reported as inexact.
RECOVERY_TOLERANCE = 1e-6


def refit_error(
    feature_map: FeatureMap, points: torch.Tensor, targets: torch.Tensor, reg: float, weights: torch.Tensor, **params: Any
) -> float:
    """||W_S - W||_F / ||W||_F for W_S of KRR(feature_map, reg, **params) refitted on points (m, d) and targets (m, k).

    W (k, p) is the model the set should reproduce; recomputing phi on the
    points exposes any preimage error.
    """
    student = KRR(feature_map, reg=reg, n_classes=weights.shape[0], **params).fit(points, targets)
    weights = weights.cpu()
    return float(torch.linalg.norm(student.weights_ - weights) / torch.linalg.norm(weights).clamp_min(1e-300))


def warn_if_inexact(error: float, subject: str = "the distilled model differs from the original") -> None:
    """Warn (at the caller's caller) when a refit error exceeds RECOVERY_TOLERANCE."""
    if not error <= RECOVERY_TOLERANCE:
        warnings.warn(f"{subject}: relative weight error {error:.3g} > {RECOVERY_TOLERANCE:g}", stacklevel=3)


def class_interleaved_labels(n_classes: int, ipc: int) -> torch.Tensor:
    """Labels (m,) with point j of class j mod k: [0, 1, ..., k-1, 0, 1, ...]."""
    return torch.arange(n_classes * ipc) % n_classes


def regularized_pinv(features: torch.Tensor, reg: float) -> torch.Tensor:
    """phi_reg(X)^+ of shape (m, p) for features (m, p): (K + reg I)^-1 Phi, or pinv(Phi^T) at reg = 0."""
    if reg == 0:
        return pinv(features.T)
    kernel = features @ features.T
    kernel.diagonal().add_(reg)
    return torch.linalg.solve(kernel, features)


def features_from_d(d: torch.Tensor, reg_s: float | str, root: str) -> tuple[torch.Tensor, float]:
    """Phi_S (m, p) whose regularised pseudo-inverse is D (m, p), and the reg_s used.

    ``reg_s="bound"`` takes the largest admissible value 1 / (4 sigma'_1^2).
    """
    if reg_s == 0:
        return pinv(d).T, 0.0
    v, s_prime, u_t = torch.linalg.svd(d, full_matrices=False)
    bound = 1.0 / (4.0 * float(s_prime[0]) ** 2)
    reg = bound if reg_s == "bound" else float(reg_s)
    if reg > bound * (1 + 1e-12):
        raise ValueError(
            f"reg_s={reg:.6g} exceeds the admissible bound 1/(4 sigma'_1^2) = {bound:.6g} for this D; "
            'use reg_s <= the bound or reg_s="bound"'
        )
    keep = s_prime > rank_tol(d, float(s_prime[0]))
    disc = (1.0 - 4.0 * reg * s_prime[keep] ** 2).clamp_min(0).sqrt()
    sign = 1.0 if root == "plus" else -1.0
    sigma = torch.zeros_like(s_prime)
    sigma[keep] = (1.0 + sign * disc) / (2.0 * s_prime[keep])
    return (v * sigma) @ u_t, reg


def reference_points(x: Any, y: Any, ipc: int, teacher: KRR, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """ipc real points per class, interleaved like the labels: (m, d)."""
    xs = as_samples(x)
    if xs.shape[1] != teacher.n_features_in_:
        raise ValueError(f"x has {xs.shape[1]} features, the teacher was fitted on {teacher.n_features_in_}")
    k = teacher.n_classes_
    targets, _ = as_targets(y, xs.shape[0], k)
    classes = targets.argmax(dim=1)
    check_labels(classes, k)
    picks = []
    for c in range(k):
        members = (classes == c).nonzero().flatten()
        if members.numel() < ipc:
            raise ValueError(f'init="real" needs {ipc} points of class {c}, the data has {members.numel()}')
        picks.append(members[torch.randperm(members.numel(), generator=gen)[:ipc]])
    order = torch.stack(picks, dim=1).flatten()  # row-major over (ipc, k): class j mod k
    index = order.numpy() if isinstance(xs, np.ndarray) else order
    return to_tensor(xs[index], device).to(torch.float64)


class KRRDistiller:
    """Distil a labelled dataset into ``ipc`` points per class that give back its KRR model exactly.

    Parameters
    ----------
    feature_map : FeatureMap, optional
        A surjective phi (Identity, RandomFCNN with non-increasing widths,
        RandomFourier with p <= d); default Identity.
    ipc : int
        Images per class; m = k * ipc points (m may exceed n).
    reg : float or "auto"
        lambda of the original KRR model (ignored when a teacher is given).
    reg_s : float or "bound"
        lambda_S of the distilled model; "bound" takes 1 / (4 sigma'_1^2).
    root : {"plus", "minus"}
        Root of the Theorem 4.1 quadratic used when reg_s > 0.
    init : {"noise", "real"}
        Z random, or the closest D to real class-balanced points (Cor. 4.1.1).
    soft_labels : bool
        With init="real", use the original model's soft labels when they have rank k.
    noise_scale : float
        Z = noise_scale * std(Y^+ W) * N(0, 1), as in the paper's code.
    seed : int
        Seeds the held-out split of the teacher, Z and the choice of real points.
    n_classes, chunk_size, device, progress
        As for ``KRR``.

    Attributes
    ----------
    distilled_ : DistilledSet
    teacher_ : KRR
        The original model.
    recovery_error_ : float
        ||W_S - W||_F / ||W||_F after recomputing phi on the recovered points.
    """

    def __init__(
        self,
        feature_map: FeatureMap | None = None,
        *,
        ipc: int = 10,
        reg: float | str = "auto",
        reg_s: float | str = 0.0,
        root: str = "plus",
        init: str = "noise",
        soft_labels: bool = True,
        noise_scale: float = 0.1,
        seed: int = 0,
        n_classes: int | None = None,
        chunk_size: int = 8192,
        device: str | torch.device | None = None,
        progress: bool = False,
    ) -> None:
        self.feature_map = feature_map
        self.ipc = ipc
        self.reg = reg
        self.reg_s = reg_s
        self.root = root
        self.init = init
        self.soft_labels = soft_labels
        self.noise_scale = noise_scale
        self.seed = seed
        self.n_classes = n_classes
        self.chunk_size = chunk_size
        self.device = device
        self.progress = progress

    def fit(
        self,
        x: Any,
        y: Any = None,
        *,
        teacher: KRR | None = None,
        eval_set: tuple[Any, Any] | None = None,
        dataset: str | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ) -> "KRRDistiller":
        """Distil (x, y); x (n, d) or (n, C, H, W), y (n,) labels or (n, k) targets.

        With a fitted ``teacher`` its weights are distilled and x, y are only
        read for ``init="real"`` (they may then be None for ``init="noise"``).
        ``dataset``, ``mean`` and ``std`` are recorded in the DistilledSet.
        """
        start = time.perf_counter()
        self._check_params()
        device = resolve_device(self.device)
        if teacher is not None and not hasattr(teacher, "weights_"):
            raise ValueError("teacher must be a fitted KRR: call teacher.fit(x, y) first")
        fmap = self._resolve_feature_map(teacher)
        if not fmap.surjective:
            raise ValueError(
                f"feature map {fmap!r} is not surjective (its output is wider than its input somewhere), "
                "so exact distillation has no preimage; use a map with p <= d"
            )
        if teacher is None:
            if x is None:
                raise ValueError("x (and y, unless x is an iterable of (x, y) batches) is required unless a fitted teacher is given")
            teacher = KRR(
                fmap, self.reg, seed=self.seed, n_classes=self.n_classes, chunk_size=self.chunk_size,
                device=self.device, progress=self.progress,
            ).fit(x, y, eval_set=eval_set)
        weights = teacher.weights_.to(device)
        k = weights.shape[0]
        gen = torch.Generator().manual_seed(self.seed)
        ipc = int(self.ipc)
        labels = class_interleaved_labels(k, ipc)
        targets = torch.nn.functional.one_hot(labels, k).to(torch.float64).to(device)
        soft_used = False
        if self.init == "real":
            if not (is_array(x) and is_array(y)):
                raise ValueError('init="real" needs the real data x and y as arrays')
            reference = reference_points(x, y, ipc, teacher, gen, device)
            ref_inverse = regularized_pinv(
                fmap(reference).to(torch.float64), 0.0 if self.reg_s == "bound" else float(self.reg_s)
            )
            if self.soft_labels:
                soft = pinv(ref_inverse).T @ weights.T
                if int(torch.linalg.matrix_rank(soft)) == k:
                    targets, soft_used = soft, True

        # D = Y^+ W + (I - P) Z with Y = T_S^T and P = Y^+ Y (Theorem 4.1).
        y_pinv = pinv(targets.T)
        particular = y_pinv @ weights
        if self.init == "real":
            free = ref_inverse
        else:
            scale = self.noise_scale * float(particular.std()) if particular.numel() > 1 else self.noise_scale
            free = scale * torch.randn(particular.shape, generator=gen, dtype=torch.float64).to(device)
        free = free - y_pinv @ (targets.T @ free)
        features, reg_s = features_from_d(particular + free, self.reg_s, self.root)

        # Bring the features into the range of phi; targets / s and reg_s / s^2 keep W (theory 11.2).
        range_scale = fmap.range_scale(features)
        features = features / range_scale
        targets = targets / range_scale
        reg_fit = reg_s / range_scale**2
        points = fmap.preimage(features)

        error = refit_error(fmap, points, targets, reg_fit, teacher.weights_, chunk_size=self.chunk_size, device=self.device)
        warn_if_inexact(error)
        image_shape = image_shape_of(x)
        self.teacher_ = teacher
        self.recovery_error_ = error
        self.distilled_ = DistilledSet(
            x=points.cpu(),
            y=targets.cpu(),
            labels=labels,
            feature_map_spec=fmap.spec(),
            reg=reg_fit,
            image_shape=image_shape,
            mean=mean,
            std=std,
            provenance={
                "dataset": dataset,
                "n": teacher.n_samples_,
                "ipc": ipc,
                "init": self.init,
                "soft_labels": soft_used,
                "seed": int(self.seed),
                "teacher_reg": teacher.reg_,
                "reg_s": reg_s,
                "root": self.root,
                "range_scale": range_scale,
                "recovery_error": error,
                "seconds": time.perf_counter() - start,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "distillmem_version": _version(),
            },
        )
        return self

    def _resolve_feature_map(self, teacher: KRR | None) -> FeatureMap:
        if teacher is None:
            return Identity() if self.feature_map is None else self.feature_map
        teacher_map = teacher.feature_map_
        if self.feature_map is not None and self.feature_map.spec() != teacher_map.spec():
            raise ValueError(f"feature_map {self.feature_map!r} differs from the teacher's {teacher_map!r}")
        return teacher_map

    def _check_params(self) -> None:
        if not (isinstance(self.ipc, (int, np.integer)) and self.ipc >= 1):
            raise ValueError(f"ipc must be an integer >= 1, got {self.ipc!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.root not in ROOTS:
            raise ValueError(f"root must be one of {ROOTS}, got {self.root!r}")
        if isinstance(self.reg_s, str):
            if self.reg_s != "bound":
                raise ValueError(f'reg_s must be a float >= 0 or "bound", got {self.reg_s!r}')
        elif not (np.isfinite(self.reg_s) and self.reg_s >= 0):
            raise ValueError(f'reg_s must be a float >= 0 or "bound", got {self.reg_s!r}')
        if not isinstance(self.seed, (int, np.integer)):
            raise TypeError(f"seed must be an integer, got {self.seed!r}")
        if not self.noise_scale > 0:
            raise ValueError(f"noise_scale must be > 0, got {self.noise_scale!r}")


def distill(
    x: Any,
    y: Any = None,
    *,
    ipc: int = 10,
    feature_map: FeatureMap | None = None,
    teacher: KRR | None = None,
    eval_set: tuple[Any, Any] | None = None,
    dataset: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    **params: Any,
) -> DistilledSet:
    """One-shot distillation: ``KRRDistiller(feature_map, ipc=ipc, **params).fit(x, y, ...).distilled_``."""
    distiller = KRRDistiller(feature_map, ipc=ipc, **params)
    return distiller.fit(x, y, teacher=teacher, eval_set=eval_set, dataset=dataset, mean=mean, std=std).distilled_


def _version() -> str:
    from . import __version__

    return __version__
