"""Baselines to compare closed-form distillation against, under one protocol.

Every function returns a :class:`~distillmem.distilled_set.DistilledSet` with
the same layout as :func:`distillmem.distill` (point j stands for class
j mod k), so all methods are judged the same way: fit the KRR head with the
set's feature map and ridge on the set, then measure test accuracy.

- :func:`random_subset`: a uniform per-class sample of real points, one-hot
  targets; the reference every distillation paper reports.
- :func:`herding`: kernel herding (Welling, "Herding dynamical weights to
  learn", ICML 2009) as used for exemplar selection by iCaRL (Rebuffi et al.,
  CVPR 2017) and as a coreset baseline by Dataset Condensation (Zhao, Mopuri &
  Bilen, ICLR 2021): per class, greedily add the real point that brings the
  mean of the chosen embeddings closest to the class mean. The embedding is the
  KRR feature map phi itself.
- :func:`kip`: Kernel Inducing Points (Nguyen, Chen & Lee, ICLR 2021) in the
  variant that Chen, Huang & Weng (NeurIPS 2024) ran for their Table 4: the
  same phi as the KRR model, real-image initialisation, Adam (lr 0.01) on the
  points, a trace-scaled ridge lambda_S = 1e-6 tr(K_S) / m, labels re-solved in
  closed form at every step and the mean squared error on a random batch of
  5000 training targets. The paper runs 30,000 steps (``KIP_PAPER_STEPS``);
  here the step budget is a parameter.

Samples are rows: x (n, d), features (n, p), targets (n, k).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ._closed_form import (
    INITS,
    build_set,
    check_choice,
    check_classes,
    check_ipc,
    check_reg_s,
    class_interleaved_labels,
    one_hot,
    record,
    refit_error,
    resolve_map,
    working_copy,
)
from ._solvers import pinv
from ._validation import as_samples, as_targets, check_int, check_labels, check_real, resolve_device, to_tensor
from .distilled_set import DistilledSet
from .features import FeatureMap
from .krr import KRR

__all__ = ["KIP_PAPER_STEPS", "herding", "herding_indices", "kip", "kip_predict", "kip_reg", "random_subset"]

#: Optimisation steps of KIP in Chen et al.'s Table 4.
KIP_PAPER_STEPS = 30_000
#: lambda_S = KIP_REG_SCALE * tr(K_S) / m, the trace-normalised ridge of KIP.
KIP_REG_SCALE = 1e-6
#: KIP keeps the features of all targets in memory up to this many entries.
KIP_CACHE_ENTRIES = 2**27
#: At most this many (step, loss) pairs are kept in a KIP set's provenance.
KIP_HISTORY_POINTS = 200

_CHUNK = 8192


# ---------------------------------------------------------------------------
# shared plumbing
# ---------------------------------------------------------------------------
class _Problem:
    """The validated inputs every baseline starts from."""

    def __init__(self, x: Any, y: Any, ipc: Any, feature_map: FeatureMap | None, teacher: KRR | None,
                 n_classes: int | None, device: str | torch.device | None) -> None:
        self.ipc = check_ipc(ipc)
        self.device = resolve_device(device)
        self.xs = as_samples(x)
        n, d = self.xs.shape
        self.fmap = working_copy(resolve_map(feature_map, teacher), self.device)
        if teacher is not None:
            if d != teacher.n_features_in_:
                raise ValueError(f"x has {d} features, the teacher was fitted on {teacher.n_features_in_}")
            n_classes = check_classes(n_classes, teacher)
        self.targets, self.k = as_targets(y, n, n_classes)
        self.classes = self.targets.argmax(dim=1)
        check_labels(self.classes, self.k)
        self.fmap.check_input(torch.zeros(1, d, dtype=torch.float64, device=self.device))
        self.teacher = teacher
        self.members = []
        for c in range(self.k):
            idx = (self.classes == c).nonzero().flatten()
            if idx.numel() < self.ipc:
                raise ValueError(
                    f"class {c} has {idx.numel()} point(s) but ipc={self.ipc} needs {self.ipc} per class"
                )
            self.members.append(idx)
        self.inputs = x  # its shape gives the set's image shape

    @property
    def n(self) -> int:
        return self.xs.shape[0]

    def rows(self, index: torch.Tensor, name: str = "x") -> torch.Tensor:
        """x[index] as a float tensor on the device (NaN/Inf rejected)."""
        index = index.cpu()
        picked = self.xs[index.numpy()] if isinstance(self.xs, np.ndarray) else self.xs[index]
        return to_tensor(picked, self.device, name=name)

    def check_finite(self) -> None:
        """Reject NaN/Inf anywhere in x, reading it in chunks."""
        for start in range(0, self.n, _CHUNK):
            to_tensor(self.xs[start : start + _CHUNK], torch.device("cpu"), first_row=start)

    def sample_per_class(self, gen: torch.Generator) -> torch.Tensor:
        """ipc uniform draws without replacement per class, interleaved: (m,) row indices."""
        picks = [idx[torch.randperm(idx.numel(), generator=gen)[: self.ipc]] for idx in self.members]
        return torch.stack(picks, dim=1).flatten()  # row-major over (ipc, k): class j mod k

    def finish(self, method: str, points: torch.Tensor, targets: torch.Tensor, reg_s: float, start: float,
               dataset: str | None, mean: Any, std: Any, *, seed: int | None = None, init: str | None = None,
               extras: dict[str, Any]) -> DistilledSet:
        """Package a DistilledSet; measure the weight error against the teacher if there is one."""
        points = points.detach().to(torch.float64).cpu()
        targets = targets.detach().to(torch.float64).cpu()
        error = None
        if self.teacher is not None:
            error = refit_error(self.fmap, points, targets, reg_s, self.teacher.weights_, device=self.device)
        provenance = record(
            method, start, dataset=dataset, n=self.n, ipc=self.ipc, seed=seed, init=init,
            teacher_reg=None if self.teacher is None else float(self.teacher.reg_), reg_s=float(reg_s),
            recovery_error=error, extras=extras,
        )
        labels = class_interleaved_labels(self.k, self.ipc)
        return build_set(points, targets, labels, self.fmap, reg_s, provenance, like=self.inputs, mean=mean, std=std)


def _one_hot(k: int, ipc: int) -> torch.Tensor:
    return one_hot(class_interleaved_labels(k, ipc), k)


# ---------------------------------------------------------------------------
# random subset
# ---------------------------------------------------------------------------
def random_subset(
    x: Any,
    y: Any,
    *,
    teacher: KRR | None = None,
    feature_map: FeatureMap | None = None,
    ipc: int = 10,
    reg_s: float = 0.0,
    seed: int = 0,
    n_classes: int | None = None,
    device: str | torch.device | None = None,
    dataset: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> DistilledSet:
    """A uniform per-class sample of ``ipc`` real points with one-hot targets.

    Parameters
    ----------
    x : tensor or ndarray of shape (n, d) or (n, C, H, W)
        Real inputs (a numpy memmap is read only where needed).
    y : tensor or ndarray of shape (n,) or (n, k)
        Integer labels, or targets whose argmax is the class.
    teacher : KRR, optional
        A fitted model; when given, ``provenance.recovery_error`` is the
        relative weight error ||W_S - W||_F / ||W||_F of KRR on the set.
        No model is fitted when it is absent.
    feature_map : FeatureMap, optional
        phi recorded in the set; default the teacher's map, else ``Identity()``.
    ipc : int
        Points per class, >= 1; every class needs at least ``ipc`` points.
    reg_s : float
        lambda >= 0 to fit the KRR head on the set with.
    seed : int
        Seeds the draw.
    n_classes : int, optional
        k; default the teacher's, else max(y) + 1 with every class present.
    device : str or torch.device, optional
        Where features are computed; the set comes back on the CPU.
    dataset, mean, std
        Recorded in the set (``mean``/``std`` to un-normalise images).

    Returns
    -------
    DistilledSet
        x (m, d) float64 rows of ``x``, y (m, k) one-hot, labels (m,) with
        point j of class j mod k; ``provenance.extras["indices"]`` are the
        rows of ``x`` taken, in the set's order.
    """
    start = time.perf_counter()
    reg_s = check_reg_s(reg_s, allow_bound=False)
    seed = check_int(seed, "seed")
    prob = _Problem(x, y, ipc, feature_map, teacher, n_classes, device)
    prob.check_finite()
    order = prob.sample_per_class(torch.Generator().manual_seed(seed))
    return prob.finish(
        "random", prob.rows(order), _one_hot(prob.k, prob.ipc), reg_s, start, dataset, mean, std,
        seed=seed, extras={"indices": order.tolist()},
    )


# ---------------------------------------------------------------------------
# herding
# ---------------------------------------------------------------------------
def herding_indices(features: torch.Tensor, count: int) -> torch.Tensor:
    """Welling herding on the rows of ``features`` (n_c, p): ``count`` distinct row indices.

    Step t (t = 0, 1, ...) adds the unused row f_i minimising
    ||mu - (s_t + f_i) / (t + 1)||, with mu the mean row and s_t the sum of the
    rows chosen so far; equivalently it maximises 2 r.f_i - ||f_i||^2 with
    r = (t + 1) mu - s_t. Ties go to the lowest index. Cost O(n_c p) per step.
    """
    feats = features.to(torch.float64)
    n = feats.shape[0]
    if not 1 <= count <= n:
        raise ValueError(f"herding needs 1 <= count <= {n} rows, got count={count}")
    mu = feats.mean(dim=0)
    sq_norms = (feats * feats).sum(dim=1)
    running = torch.zeros_like(mu)
    available = torch.ones(n, dtype=torch.bool, device=feats.device)
    chosen = []
    for t in range(count):
        residual = (t + 1) * mu - running
        gain = 2.0 * (feats @ residual) - sq_norms
        gain[~available] = -math.inf
        i = int(torch.argmax(gain))
        chosen.append(i)
        available[i] = False
        running += feats[i]
    return torch.tensor(chosen, dtype=torch.int64)


def herding(
    x: Any,
    y: Any,
    *,
    teacher: KRR | None = None,
    feature_map: FeatureMap | None = None,
    ipc: int = 10,
    reg_s: float = 0.0,
    n_classes: int | None = None,
    chunk_size: int = _CHUNK,
    device: str | torch.device | None = None,
    progress: bool = False,
    dataset: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> DistilledSet:
    """Herding in the embedding phi: per class, ``ipc`` real points whose feature mean tracks the class mean.

    For each class c the features phi(x_i) of its n_c points are computed in
    chunks of ``chunk_size`` rows (in the dtype of ``x``) and kept, (n_c, p);
    the greedy selection (``herding_indices``) then costs O(n_c p) per step,
    so memory is O(n_c p) and time O(n p (d + ipc)) for a one-layer map.
    The method is deterministic (no seed).

    Parameters
    ----------
    x, y, teacher, feature_map, ipc, reg_s, n_classes, device, dataset, mean, std
        As for :func:`random_subset`.
    chunk_size : int
        Rows per feature chunk.
    progress : bool
        Show a progress bar over classes.

    Returns
    -------
    DistilledSet
        x (m, d) float64 rows of ``x`` in herding order within each class
        (slot i of class c is the (i+1)-th pick), y (m, k) one-hot, labels (m,)
        of class j mod k; ``provenance.extras["indices"]`` are the rows taken.
    """
    start = time.perf_counter()
    reg_s = check_reg_s(reg_s, allow_bound=False)
    chunk_size = check_int(chunk_size, "chunk_size", minimum=1)
    prob = _Problem(x, y, ipc, feature_map, teacher, n_classes, device)
    picks = []
    with torch.no_grad():
        for c in tqdm(range(prob.k), desc="herding", unit="class", disable=not progress, leave=False):
            members = prob.members[c]
            feats = torch.cat([
                prob.fmap(prob.rows(members[s : s + chunk_size])).to(torch.float64)
                for s in range(0, members.numel(), chunk_size)
            ])
            picks.append(members[herding_indices(feats, prob.ipc)])
    order = torch.stack(picks, dim=1).flatten()
    return prob.finish(
        "herding", prob.rows(order), _one_hot(prob.k, prob.ipc), reg_s, start, dataset, mean, std,
        extras={"indices": order.tolist()},
    )


# ---------------------------------------------------------------------------
# KIP
# ---------------------------------------------------------------------------
def kip_reg(kernel: torch.Tensor, scale: float = KIP_REG_SCALE) -> torch.Tensor:
    """KIP's ridge lambda_S = scale * tr(K_S) / m for the support kernel K_S (m, m)."""
    return scale * torch.diagonal(kernel).sum() / kernel.shape[0]


def kip_predict(
    support_features: torch.Tensor,
    target_features: torch.Tensor,
    target_y: torch.Tensor | None = None,
    support_y: torch.Tensor | None = None,
    reg_scale: float = KIP_REG_SCALE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One KIP evaluation: predictions (b, k), support labels (m, k) and lambda_S.

    With Phi_S (m, p) the support features, Phi_B (b, p) the target features,
    K_S = Phi_S Phi_S^T and M = (K_S + lambda_S I)^-1 Phi_S Phi_B^T (m, b), the
    distilled model predicts M^T T_S on the targets. With ``support_y=None``
    the labels are re-solved in closed form, T_S^T = T_B^T M^+ (least squares
    over the batch, needs ``target_y`` (b, k)): through a QR factorisation
    M^T = Q R when m <= b, so T_S = R^-1 Q^T T_B and the predictions are
    Q Q^T T_B (the same as the pseudo-inverse for full-rank M, and several
    times cheaper than an SVD), through ``pinv`` otherwise. Differentiable in
    ``support_features``.
    """
    kernel = support_features @ support_features.T
    reg = kip_reg(kernel, reg_scale)
    eye = torch.eye(kernel.shape[0], dtype=kernel.dtype, device=kernel.device)
    # M^T = Phi_B [(K_S + lambda_S I)^-1 Phi_S]^T: solving against the p columns of Phi_S, not the b of the batch.
    m_t = target_features @ torch.linalg.solve(kernel + reg * eye, support_features).T
    if support_y is not None:
        return m_t @ support_y, support_y, reg
    if target_y is None:
        raise ValueError("kip_predict needs target_y to re-solve the support labels")
    if m_t.shape[0] >= m_t.shape[1]:
        q, r = torch.linalg.qr(m_t)
        coef = q.T @ target_y
        support_y = torch.linalg.solve_triangular(r, coef, upper=True)
        return q @ coef, support_y, reg
    support_y = pinv(m_t) @ target_y
    return m_t @ support_y, support_y, reg


def kip(
    x: Any,
    y: Any,
    *,
    teacher: KRR | None = None,
    feature_map: FeatureMap | None = None,
    ipc: int = 10,
    steps: int = KIP_PAPER_STEPS,
    lr: float = 0.01,
    batch_size: int = 5000,
    learn_labels: bool = True,
    reg_scale: float = KIP_REG_SCALE,
    dtype: torch.dtype = torch.float32,
    cache_features: bool | None = None,
    init: str = "noise",
    seed: int = 0,
    n_classes: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    dataset: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> DistilledSet:
    """Kernel Inducing Points in the variant Chen et al. (2024) ran for their Table 4 (with ``init="real"``).

    The support points X_S (m, d), m = k * ipc, are the parameters. Each step
    draws a batch of ``batch_size`` training points (all of them when
    n <= batch_size), computes Phi_S = phi(X_S), K_S = Phi_S Phi_S^T,
    lambda_S = reg_scale * tr(K_S) / m and M = (K_S + lambda_S I)^-1 Phi_S
    Phi_B^T (m, b); with ``learn_labels`` the support labels are re-solved in
    closed form, T_S^T = T_B^T M^+ (differentiably), otherwise they stay one-hot;
    the loss is the mean squared error of M^T T_S against T_B, and Adam
    (``lr``) updates X_S through autograd in phi. The paper's budget is
    ``KIP_PAPER_STEPS`` = 30,000 steps, the default; pass a smaller ``steps``
    for a fixed budget.

    After the last step the returned set is evaluated once more in float64:
    its ``reg`` is lambda_S of the final points and its ``y`` the closed-form
    labels on one more batch (one-hot without ``learn_labels``), so
    ``KRR(feature_map, reg=s.reg).fit(s.x, s.y)`` is exactly KIP's model.

    Parameters
    ----------
    x : tensor or ndarray of shape (n, d) or (n, C, H, W)
        The target set (the paper: the whole training split).
    y : tensor or ndarray of shape (n,) or (n, k)
        Labels (made one-hot) or targets.
    teacher : KRR, optional
        As for :func:`random_subset`.
    feature_map : FeatureMap, optional
        phi; default the teacher's map, else ``Identity()``. Its forward must
        be differentiable in its input (true of the bundled maps).
    ipc : int
        Support points per class, >= 1.
    steps : int
        Adam steps, >= 0 (0 returns the initial points with their labels).
    lr : float
        Adam learning rate.
    batch_size : int
        Targets per step.
    learn_labels : bool
        Re-solve the support labels in closed form at every step.
    reg_scale : float
        The 1e-6 of lambda_S.
    dtype : torch.float32 or torch.float64
        Precision of the optimisation (float32 as in the paper's code).
    cache_features : bool, optional
        Keep phi of all n targets in memory (computed once) instead of
        recomputing the batch features each step; by default when n * p
        <= ``KIP_CACHE_ENTRIES``. The targets do not depend on X_S, so this
        changes the cost, not the result.
    init : {"noise", "real"}
        Start from N(0, 1) noise or from a uniform per-class sample of real
        points (the same one as ``random_subset(..., seed=seed)``; the paper's
        setting).
    seed : int
        Seeds the initial points and the batches.
    n_classes, device, dataset, mean, std
        As for :func:`random_subset`.
    progress : bool
        Show a tqdm progress bar with the loss.

    Returns
    -------
    DistilledSet
        x (m, d) float64 learned points, y (m, k) learned labels, labels (m,)
        of class j mod k, reg = lambda_S. ``provenance.extras`` holds "steps",
        "lr", "batch_size", "learn_labels", "reg_scale", "dtype",
        "cache_features", "init_indices", "initial_loss", "final_loss" (the
        float64 loss of the returned set on its label batch), "loss_history"
        ([step, loss] pairs of the training loss before that step, at most
        ``KIP_HISTORY_POINTS``), "setup_seconds" and "step_seconds" (mean time
        per step).
    """
    start = time.perf_counter()
    steps = check_int(steps, "steps", minimum=0)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    lr = check_real(lr, "lr", positive=True)
    reg_scale = check_real(reg_scale, "reg_scale", positive=True)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    check_choice(init, "init", INITS)
    seed = check_int(seed, "seed")
    prob = _Problem(x, y, ipc, feature_map, teacher, n_classes, device)
    fmap, dev, n, k = prob.fmap, prob.device, prob.n, prob.k
    d = prob.xs.shape[1]
    p = fmap.out_features(d)
    gen = torch.Generator().manual_seed(seed)

    # Targets: all of x as one tensor in `dtype` (checked for NaN/Inf), optionally their features.
    x_all = torch.cat([prob.rows(torch.arange(s, min(s + _CHUNK, n))).to(dtype) for s in range(0, n, _CHUNK)])
    t_all = prob.targets.to(device=dev, dtype=dtype)
    if cache_features is None:
        cache_features = n * p <= KIP_CACHE_ENTRIES
    with torch.no_grad():
        f_all = torch.cat([fmap(x_all[s : s + _CHUNK]) for s in range(0, n, _CHUNK)]) if cache_features else None

    if init == "real":
        init_index = prob.sample_per_class(gen)
        support = x_all[init_index.to(dev)].clone()
    else:
        init_index = None
        support = torch.randn(prob.k * prob.ipc, d, generator=gen, dtype=torch.float64).to(device=dev, dtype=dtype)
    support.requires_grad_(True)
    fixed_y = None if learn_labels else _one_hot(k, prob.ipc).to(device=dev, dtype=dtype)
    optimizer = torch.optim.Adam([support], lr=lr)

    def batch_index() -> torch.Tensor:
        if n <= batch_size:
            return torch.arange(n, device=dev)
        return torch.randperm(n, generator=gen)[:batch_size].to(dev)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        idx = batch_index()
        if f_all is not None:
            return f_all[idx], t_all[idx]
        with torch.no_grad():
            return fmap(x_all[idx]), t_all[idx]

    every = max(1, math.ceil(steps / KIP_HISTORY_POINTS))
    history: list[list[float]] = []
    setup_seconds = time.perf_counter() - start
    loop_start = time.perf_counter()
    bar = tqdm(range(steps), desc=f"KIP ipc={prob.ipc}", unit="step", disable=not progress, leave=False)
    for step in bar:
        f_b, t_b = batch()
        pred, _, _ = kip_predict(fmap(support), f_b, t_b, fixed_y, reg_scale)
        loss = F.mse_loss(pred, t_b)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                f"KIP diverged at step {step}: the loss is {value}; try dtype=torch.float64 or a smaller lr"
            )
        if step % every == 0 or step == steps - 1:
            history.append([step, value])
            bar.set_postfix(loss=f"{value:.4g}", refresh=False)
    bar.close()
    loop_seconds = time.perf_counter() - loop_start

    # The returned model, in float64: lambda_S of the final points, labels re-solved on one more batch.
    with torch.no_grad():
        points = support.detach().to(torch.float64)
        idx = batch_index()
        f_b = fmap(x_all[idx].to(torch.float64))
        t_b = prob.targets.to(dev)[idx]
        f_s = fmap(points)
        pred, support_y, reg_t = kip_predict(f_s, f_b, t_b, None if learn_labels else _one_hot(k, prob.ipc).to(dev), reg_scale)
        reg = float(reg_t)
        final_loss = float(F.mse_loss(pred, t_b))
    extras = {
        "init_indices": None if init_index is None else init_index.tolist(),
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "learn_labels": bool(learn_labels),
        "reg_scale": reg_scale,
        "dtype": str(dtype).replace("torch.", ""),
        "cache_features": bool(cache_features),
        "initial_loss": history[0][1] if history else None,
        "final_loss": final_loss,
        "loss_history": history,
        "setup_seconds": setup_seconds,
        "step_seconds": loop_seconds / steps if steps else None,
    }
    return prob.finish("kip", points, support_y, reg, start, dataset, mean, std, seed=seed, init=init, extras=extras)
