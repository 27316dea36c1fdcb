"""The closed form every builder shares (Chen, Huang & Weng, NeurIPS 2024; docs/math.md §3-§6).

Samples are rows. With W (k, p) the KRR weights, T_S (m, k) the distilled
targets, Y = T_S^T and P = Y^+ Y, every D (m, p) of the form

    D = Y^+ W + (I - P) Z                                   (Theorem 4.1)

gives features Phi_S (m, p) with T_S^T phi_reg_s(Phi_S)^+ = W: Phi_S = pinv(D)^T
for reg_s = 0, or the singular values of D mapped by the quadratic of
Theorem 4.1 for reg_s > 0 (Theorem 5.1 in feature space). Z is random noise or,
for real initialisation, the regularised pseudo-inverse phi_reg_s(X_ref)^+ of
real class-balanced points, which also gives soft labels (Corollary 4.1.1). A preimage of Phi_S under phi gives the
points; refitting KRR on them measures how exact the set is.

Convention of the public builders (``distill``/``KRRDistiller``,
``distill_labels``, ``distill_deep_linear``, ``distill_approximate``,
``distill_private``, ``random_subset``, ``herding``, ``kip``):

- data ``x, y`` come first and positionally (``distill_labels`` takes the
  fixed points ``x_s`` instead); everything else is keyword-only;
- ``teacher`` is a fitted ``KRR`` or, where the builder needs a model and none
  is given, one is fitted on ``x, y`` with ``feature_map``, ``reg``,
  ``n_classes`` and ``seed``; an unfitted teacher raises ``NOT_FITTED``;
- ``reg`` is always the teacher's lambda and ``reg_s`` the set's;
- defaults ``ipc=10``, ``init="noise"``, ``seed=0``, ``device=None`` (CPU),
  ``progress=False``; ``dataset``, ``mean`` and ``std`` are recorded in the set;
- the caller's feature map and teacher are never moved or changed: the
  builders use the map as it is when it already lives on ``device`` and a
  copy moved there otherwise, and read the teacher's weights as tensors. Sets come back on the CPU in float64.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._solvers import pinv, rank_tol
from ._validation import as_samples, as_targets, check_int, check_labels, check_real, image_shape_of, to_tensor
from .distilled_set import DistilledSet
from .features import FeatureMap, Identity
from .krr import KRR
from .provenance import Provenance

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

INITS = ("noise", "real")
ROOTS = ("plus", "minus")
#: Above this relative weight error a distilled set is reported as inexact.
RECOVERY_TOLERANCE = 1e-6
#: The one error every builder raises for a teacher that has not been fitted.
NOT_FITTED = "teacher must be a fitted KRR: call teacher.fit(x, y) first"


# -- arguments -----------------------------------------------------------------
def check_teacher(teacher: Any) -> KRR:
    """``teacher`` if it is a fitted distillmem KRR; TypeError or ValueError(NOT_FITTED) otherwise."""
    if not isinstance(teacher, KRR):
        raise TypeError(f"teacher must be a distillmem KRR, got {type(teacher).__name__}")
    if not hasattr(teacher, "weights_"):
        raise ValueError(NOT_FITTED)
    return teacher


def check_classes(n_classes: int | None, teacher: KRR) -> int:
    """The teacher's number of classes k; a given ``n_classes`` must equal it."""
    if n_classes is not None and n_classes != teacher.n_classes_:
        raise ValueError(f"n_classes={n_classes} differs from the teacher's {teacher.n_classes_} classes")
    return teacher.n_classes_


def check_ipc(ipc: Any) -> int:
    return check_int(ipc, "ipc", minimum=1)


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if not (isinstance(value, str) and value in choices):
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_reg_s(reg_s: Any, *, allow_bound: bool = True) -> float | str:
    """lambda_S as a float >= 0, or ``"bound"`` where the builder can compute it."""
    if isinstance(reg_s, str):
        if allow_bound and reg_s == "bound":
            return reg_s
        raise ValueError(f"reg_s must be a number >= 0{' or ' + repr('bound') if allow_bound else ''}, got {reg_s!r}")
    return check_real(reg_s, "reg_s", minimum=0.0)


def check_feature_map(feature_map: Any) -> FeatureMap | None:
    if feature_map is not None and not isinstance(feature_map, FeatureMap):
        raise TypeError(f"feature_map must be a distillmem FeatureMap, got {type(feature_map).__name__}")
    return feature_map


def working_copy(feature_map: FeatureMap, device: torch.device) -> FeatureMap:
    """``feature_map`` on ``device``: itself if already there, else a moved copy (the caller's map never moves)."""
    return feature_map.on_device(device)


def resolve_map(feature_map: FeatureMap | None, teacher: KRR | None) -> FeatureMap:
    """The map to use: the teacher's (``feature_map`` must then match it), else ``feature_map`` or Identity."""
    check_feature_map(feature_map)
    if teacher is None:
        return Identity() if feature_map is None else feature_map
    teacher_map = check_teacher(teacher).feature_map_
    if feature_map is not None and feature_map.spec() != teacher_map.spec():
        raise ValueError(f"feature_map {feature_map!r} differs from the teacher's {teacher_map!r}")
    return teacher_map


def resolve_teacher(
    x: Any,
    y: Any,
    *,
    teacher: KRR | None,
    feature_map: FeatureMap | None,
    device: torch.device,
    eval_set: tuple[Any, Any] | None = None,
    **krr_params: Any,
) -> tuple[KRR, FeatureMap]:
    """The model to distil and a working copy of its map on ``device``.

    With a ``teacher`` it is checked and returned as is; otherwise a KRR with
    ``krr_params`` (reg, seed, n_classes, chunk_size, progress) is fitted on
    (x, y) on a copy of ``feature_map``.
    """
    chosen = resolve_map(feature_map, teacher)
    if teacher is not None:
        check_classes(krr_params.get("n_classes"), teacher)
        return teacher, working_copy(chosen, device)
    if x is None:
        raise ValueError("x (and y, unless x is an iterable of (x, y) batches) is required unless a fitted teacher is given")
    fmap = working_copy(chosen, device)
    return KRR(fmap, device=device, **krr_params).fit(x, y, eval_set=eval_set), fmap


# -- Theorem 4.1 -----------------------------------------------------------------
def class_interleaved_labels(n_classes: int, ipc: int) -> torch.Tensor:
    """Labels (m,) with point j of class j mod k: [0, 1, ..., k-1, 0, 1, ...]."""
    return torch.arange(n_classes * ipc) % n_classes


def distilled_classes(weights: torch.Tensor) -> torch.Tensor:
    """The classes (CPU int64) that get points: those whose row of W (k, p) is not exactly zero.

    A class absent from the teacher's data has a zero row, which a set without
    points of that class reproduces exactly. Giving it points would be worse
    than useless: the rows of D for that class would be the projected noise
    alone, rank-deficient by construction, and the set's model would be
    ill-conditioned at lambda_S = 0.
    """
    active = (weights != 0).any(dim=1).nonzero().flatten().cpu()
    if active.numel() == 0:
        raise ValueError("the teacher's weights are all zero: there is no model to distil")
    return active


def interleaved_labels_of(weights: torch.Tensor, ipc: int) -> torch.Tensor:
    """Labels (m,) = ipc points of each class with a nonzero row of W, interleaved like ``class_interleaved_labels``."""
    active = distilled_classes(weights)
    return active[class_interleaved_labels(active.numel(), ipc)]


def one_hot(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, n_classes).to(torch.float64)


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


def reference_points(
    x: Any, y: Any, ipc: int, teacher: KRR, gen: torch.Generator, device: torch.device
) -> torch.Tensor:
    """ipc real points per class of (x, y), interleaved like the labels: (m, d) float64 on ``device``."""
    if not (isinstance(x, (torch.Tensor, np.ndarray)) and isinstance(y, (torch.Tensor, np.ndarray))):
        raise ValueError('init="real" needs the real data x and y as arrays; pass them, or use init="noise"')
    xs = as_samples(x)
    if xs.shape[1] != teacher.n_features_in_:
        raise ValueError(f"x has {xs.shape[1]} features, the teacher was fitted on {teacher.n_features_in_}")
    k = teacher.n_classes_
    targets, _ = as_targets(y, xs.shape[0], k)
    classes = targets.argmax(dim=1)
    check_labels(classes, k)
    picks = []
    for c in distilled_classes(teacher.weights_).tolist():
        members = (classes == c).nonzero().flatten()
        if members.numel() < ipc:
            raise ValueError(f'init="real" needs {ipc} points of class {c}, the data has {members.numel()}')
        picks.append(members[torch.randperm(members.numel(), generator=gen)[:ipc]])
    order = torch.stack(picks, dim=1).flatten()  # row-major over (ipc, classes): interleaved like the labels
    index = order.numpy() if isinstance(xs, np.ndarray) else order
    return to_tensor(xs[index], device).to(torch.float64)


@dataclass
class TargetFeatures:
    """Theorem 4.1/5.1 features brought into the range of phi, with their targets (all on one device)."""

    features: torch.Tensor  # Phi_S / s, (m, p)
    targets: torch.Tensor  # T_S / s, (m, k)
    labels: torch.Tensor  # (m,) int64 on the CPU
    reg_s: float  # lambda_S solved for
    reg: float  # reg_s / s^2, the set's lambda
    range_scale: float  # s
    soft_labels: bool


def target_features(
    fmap: FeatureMap,
    weights: torch.Tensor,
    ipc: int,
    *,
    gen: torch.Generator,
    init: str = "noise",
    reference: torch.Tensor | None = None,
    reg_s: float | str = 0.0,
    root: str = "plus",
    soft_labels: bool = True,
    noise_scale: float = 0.1,
    noise_std: float | None = None,
    project: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> TargetFeatures:
    """Features Phi_S (m, p) that give back ``weights`` W (k, p), and their targets.

    m = ipc times the number of classes with a nonzero row of W (all k when
    the teacher saw every class; see ``distilled_classes``).

    Z is phi_reg_s(``reference``)^+ (init "real", with soft labels T_S =
    pinv(Z)^T W^T when ``soft_labels`` and they have rank k) or Gaussian noise
    of standard deviation ``noise_std``, by default ``noise_scale * std(Y^+ W)``
    as in the paper's code. ``project`` maps Z before the (I - P) projection.
    The features are divided by ``fmap.range_scale``, and so are the targets
    (reg by its square), which keeps W (docs/math.md §6.2 and §11.2).
    """
    k = weights.shape[0]
    device = weights.device
    labels = interleaved_labels_of(weights, ipc)
    targets = one_hot(labels, k).to(device)
    soft_used = False
    if init == "real":
        reference_features = fmap(reference).to(torch.float64)
        reg_reference = 0.0 if reg_s == "bound" else float(reg_s)
        free = regularized_pinv(reference_features, reg_reference)
        if soft_labels:
            # (A^+)^+ = A: at reg 0 the soft labels are the teacher's scores on the reference, no second inverse.
            soft = (reference_features if reg_reference == 0 else pinv(free).T) @ weights.T
            if int(torch.linalg.matrix_rank(soft)) == int(labels.unique().numel()):
                targets, soft_used = soft, True
    y_pinv = pinv(targets.T)
    particular = y_pinv @ weights
    if init != "real":
        if noise_std is None:
            noise_std = noise_scale * float(particular.std()) if particular.numel() > 1 else noise_scale
        free = noise_std * torch.randn(particular.shape, generator=gen, dtype=torch.float64).to(device)
    if project is not None:
        free = project(free)
    free = free - y_pinv @ (targets.T @ free)
    features, reg_used = features_from_d(particular + free, reg_s, root)
    scale = float(fmap.range_scale(features))
    return TargetFeatures(features / scale, targets / scale, labels, reg_used, reg_used / scale**2, scale, soft_used)


# -- exactness -------------------------------------------------------------------
def refit_error(
    feature_map: FeatureMap, points: torch.Tensor, targets: torch.Tensor, reg: float, weights: torch.Tensor, **params: Any
) -> float:
    """||W_S - W||_F / ||W||_F for W_S of KRR(feature_map, reg, **params) refitted on points (m, d) and targets (m, k).

    W (k, p) is the model the set should reproduce; recomputing phi on the
    points exposes any preimage error. ``feature_map`` is moved to the KRR's
    device: pass a working copy.
    """
    student = KRR(feature_map, reg=reg, n_classes=weights.shape[0], **params).fit(points, targets)
    weights = weights.cpu()
    return float(torch.linalg.norm(student.weights_ - weights) / torch.linalg.norm(weights).clamp_min(1e-300))


def warn_if_inexact(error: float, subject: str = "the distilled model differs from the original") -> None:
    """Warn, at the user's line that called into distillmem, when a refit error exceeds RECOVERY_TOLERANCE."""
    if not error <= RECOVERY_TOLERANCE:
        warnings.warn(f"{subject}: relative weight error {error:.3g} > {RECOVERY_TOLERANCE:g}", stacklevel=_outside_level())


def _outside_level() -> int:
    """The stacklevel, seen from our caller, of the first frame outside the distillmem package.

    Builders reach the warning through one to three frames of their own, so a
    fixed stacklevel would point into the package for some of them.
    """
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


# -- the set ---------------------------------------------------------------------
def build_set(
    points: torch.Tensor,
    targets: torch.Tensor,
    labels: torch.Tensor,
    fmap: FeatureMap,
    reg: float,
    provenance: Provenance,
    *,
    like: Any = None,
    mean: Any = None,
    std: Any = None,
) -> DistilledSet:
    """A DistilledSet on the CPU in float64; ``like`` (the inputs, (n, C, H, W) or (n, d)) gives the image shape."""
    return DistilledSet(
        x=points.detach().to(device="cpu", dtype=torch.float64),
        y=targets.detach().to(device="cpu", dtype=torch.float64),
        labels=labels.detach().cpu().to(torch.int64),
        feature_map_spec=fmap.spec(),
        reg=float(reg),
        image_shape=image_shape_of(like),
        mean=mean,
        std=std,
        provenance=provenance,
    )


def record(method: str, start: float, **fields: Any) -> Provenance:
    """The provenance of a set whose builder started at ``time.perf_counter() == start``."""
    return Provenance(method=method, seconds=time.perf_counter() - start, **fields)
