"""Distillation for feature maps without an exact preimage (paper sections 5.2 and 7; docs/math.md §7.2 and §7.3).

- ``distill_deep_linear``: deep linear maps that widen (d < p). When W was
  fitted on this map's features, k points X_S = M^+ W^+ Y_S already suffice;
  the range condition is checked.
- ``distill_approximate``: any map, e.g. a frozen backbone wrapped in a
  ``ModuleMap``: target features by Theorem 5.1, an approximate preimage by
  optimisation, then least-squares labels (Theorem 4.2) on the features
  actually reached.

Both follow the builders' convention (see ``distillmem._closed_form``).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ._closed_form import (
    INITS,
    ROOTS,
    build_set,
    check_choice,
    check_ipc,
    check_reg_s,
    record,
    reference_points,
    refit_error,
    regularized_pinv,
    resolve_map,
    resolve_teacher,
    target_features,
    warn_if_inexact,
)
from ._solvers import pinv
from ._validation import check_int, check_real, resolve_device
from .distilled_set import DistilledSet
from .features import FeatureMap, ModuleMap, RandomLinear
from .features.linear import RANGE_TOLERANCE
from .krr import KRR


def distill_deep_linear(
    x: Any = None,
    y: Any = None,
    *,
    teacher: KRR | None = None,
    feature_map: RandomLinear | None = None,
    ipc: int = 10,
    reg: float | str = "auto",
    noise_scale: float = 0.1,
    tol: float = RANGE_TOLERANCE,
    seed: int = 0,
    n_classes: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    dataset: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> DistilledSet:
    """Distil a KRR model on a deep linear map into k * ipc points, also for expanding maps.

    Samples are rows. With W (k, p) the teacher's weights, M (p, d) the
    composed map, one-hot interleaved targets T_S (m, k), Y = T_S^T and
    P = Y^+ Y, this builds (reg_s = 0, Theorems 5.1 / 5.3)

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
    x, y : optional
        Data to fit the teacher on when none is given.
    teacher : KRR, optional
        Fitted, with a :class:`RandomLinear` feature map.
    feature_map : RandomLinear, optional
        The map of the teacher fitted on (x, y).
    ipc : int
        Points per class, m = k * ipc.
    reg : float or "auto"
        lambda of the teacher fitted on (x, y).
    noise_scale : float
        Scale of Z for ipc > 1.
    tol : float
        Tolerance of the range condition.
    seed, n_classes, device, progress, dataset, mean, std
        As for :func:`distillmem.distill`.

    Returns
    -------
    DistilledSet
        One-hot targets, reg = 0, provenance ``method="deep_linear"`` with
        ``extras`` ``map_rank`` and ``range_residual``.

    Raises
    ------
    ValueError
        If the teacher is unfitted, its map is not a RandomLinear, or the
        range condition fails.
    """
    start = time.perf_counter()
    ipc, seed = check_ipc(ipc), check_int(seed, "seed")
    check_real(noise_scale, "noise_scale", positive=True)
    tol = check_real(tol, "tol", minimum=0.0)
    device = resolve_device(device)
    if not isinstance(resolve_map(feature_map, teacher), RandomLinear):
        raise ValueError(f"distill_deep_linear needs a RandomLinear map, got {resolve_map(feature_map, teacher)!r}")
    teacher, fmap = resolve_teacher(
        x, y, teacher=teacher, feature_map=feature_map, device=device, reg=reg, seed=seed, n_classes=n_classes,
        progress=progress,
    )
    weights = teacher.weights_.to(device)
    residual = fmap.range_residual(weights)
    if not residual <= tol:
        raise ValueError(
            "range condition Range(W^T) ⊆ Range(M) fails: ||(I - M M^+) W^T||_F / ||W^T||_F = "
            f"{residual:.3g} > tol={tol:g}. No distilled set of any size gives back W through this "
            f"linear map (rank {fmap.rank} < p={fmap.widths[-1]}); was W fitted on features of this same map?"
        )
    m_mat = fmap.composed
    m_pinv = pinv(m_mat)  # (d, p)
    solved = target_features(
        fmap, weights, ipc, gen=torch.Generator().manual_seed(seed), noise_scale=noise_scale,
        # Rows of Z projected onto Range(M): Z M^{+T} M^T = Z (M M^+)^T.
        project=lambda free: (free @ m_pinv.T) @ m_mat.T,
    )
    points = solved.features @ m_pinv.T
    error = refit_error(fmap, points, solved.targets, 0.0, teacher.weights_, solver="svd", device=device)
    warn_if_inexact(error)
    provenance = record(
        "deep_linear", start, dataset=dataset, n=teacher.n_samples_, ipc=ipc, seed=seed, teacher_reg=teacher.reg_,
        reg_s=0.0, recovery_error=error, extras={"map_rank": fmap.rank, "range_residual": residual},
    )
    return build_set(points, solved.targets, solved.labels, fmap, 0.0, provenance, like=x, mean=mean, std=std)


def distill_approximate(
    x: Any = None,
    y: Any = None,
    *,
    teacher: KRR | None = None,
    feature_map: FeatureMap | None = None,
    ipc: int = 10,
    reg: float | str = "auto",
    reg_s: float | str = 0.0,
    root: str = "plus",
    init: str = "noise",
    soft_labels: bool = True,
    noise_scale: float = 0.1,
    solve_labels: bool = True,
    steps: int | None = None,
    lr: float | None = None,
    optimizer: str | None = None,
    seed: int = 0,
    n_classes: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    dataset: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> DistilledSet:
    """Distil a KRR model whose feature map is not surjective.

    1. The Theorem 5.1 target features Phi_S (m, p), as ``distill`` computes
       them (init "real": Z from ``ipc`` real points per class of (x, y);
       "noise": Z random, x and y may be None when a teacher is given).
    2. X_S by optimisation: minimise ||phi(X_S) - Phi_S||^2 (ModuleMap's
       preimage with ``steps``, ``lr``, ``optimizer``; any other FeatureMap is
       wrapped in a ModuleMap for this step), starting from the real points
       or from seeded noise.
    3. With ``solve_labels``, the Theorem 4.2 labels on the recovered features
       Phi_hat = phi(X_S): T_S = pinv(Q)^T W^T with Q = phi_{reg_s}(Phi_hat)^+,
       the least-squares minimiser of ||W_S - W||_F for these points.

    The other parameters are those of :func:`distillmem.distill`. Returns a
    DistilledSet with provenance ``method="approximate"``; its ``extras`` hold
    ``feature_residual`` (relative, step 2), ``recovery_error_before_labels``
    (with the step-1 labels) and ``label_step_used`` (False when the step was
    off, or when the solved labels were not better, which happens only at
    rounding level). The set's ``feature_map_spec`` is the teacher map's spec;
    for a ModuleMap rebuild the map with ``ModuleMap.rebuild(spec, module)``.
    """
    start = time.perf_counter()
    ipc, seed = check_ipc(ipc), check_int(seed, "seed")
    check_choice(init, "init", INITS)
    check_choice(root, "root", ROOTS)
    reg_s = check_reg_s(reg_s)
    check_real(noise_scale, "noise_scale", positive=True)
    if steps is not None:
        steps = check_int(steps, "steps", minimum=1)
    if lr is not None:
        lr = check_real(lr, "lr", positive=True)
    device = resolve_device(device)
    teacher, fmap = resolve_teacher(
        x, y, teacher=teacher, feature_map=feature_map, device=device, reg=reg, seed=seed, n_classes=n_classes,
        progress=progress,
    )
    solver = fmap if isinstance(fmap, ModuleMap) else ModuleMap(fmap, teacher.n_features_in_, seed=seed)
    weights = teacher.weights_.to(device)
    gen = torch.Generator().manual_seed(seed)
    reference = reference_points(x, y, ipc, teacher, gen, device) if init == "real" else None
    solved = target_features(
        fmap, weights, ipc, gen=gen, init=init, reference=reference, reg_s=reg_s, root=root,
        soft_labels=soft_labels, noise_scale=noise_scale,
    )
    points, residual = solver.preimage_with_residual(
        solved.features, init=reference, steps=steps, lr=lr, optimizer=optimizer
    )
    points = points.to(torch.float64)

    def weight_error(t: torch.Tensor) -> float:
        return refit_error(fmap, points, t, solved.reg, teacher.weights_, device=device)

    targets = solved.targets
    error_before = weight_error(targets)
    error, labels_used = error_before, False
    if solve_labels:
        with torch.no_grad():
            recovered = fmap(points).to(torch.float64)
        q = regularized_pinv(recovered, solved.reg)
        solved_targets = pinv(q).T @ weights.T
        error_solved = weight_error(solved_targets)
        # The least-squares labels cannot be worse except by rounding, when both errors are ~eps.
        labels_used = error_solved <= error_before
        if labels_used:
            targets, error = solved_targets, error_solved
    provenance = record(
        "approximate", start, dataset=dataset, n=teacher.n_samples_, ipc=ipc, seed=seed, init=init,
        teacher_reg=teacher.reg_, reg_s=solved.reg_s, range_scale=solved.range_scale, recovery_error=error,
        extras={
            "root": root,
            "soft_labels": solved.soft_labels,
            "optimizer": optimizer or solver.optimizer,
            "steps": solver.steps if steps is None else steps,
            "feature_residual": residual,
            "label_step": bool(solve_labels),
            "label_step_used": labels_used,
            "recovery_error_before_labels": error_before,
        },
    )
    return build_set(points, targets, solved.labels, fmap, solved.reg, provenance, like=x, mean=mean, std=std)
