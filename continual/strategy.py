"""KRRStrategy: an Avalanche strategy whose learner is a fixed feature map with a closed-form KRR head."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from avalanche.training.plugins.evaluation import default_evaluator
from torch import nn

import distillmem as dm
from distillmem.features import FeatureMap
from distillmem.memory import SHRINKS
from distillmem.sketch import GramSketch

from .data import ExperienceData, check_fits
from .template import ClosedFormTemplate

MEMORIES = ("moments", "sketch", "per-class")
#: lambda candidates of ``reg="auto"``: 10^-6 .. 10^5.5, as in the paper's grid.
REG_GRID: tuple[float, ...] = tuple(10.0 ** (e / 2) for e in range(-12, 12))


class KRRHead(nn.Module):
    """Class scores W phi(flatten(x)): inputs (n, ...) -> (n, k) float32; W (k, p) float64, zero until fitted."""

    def __init__(self, feature_map: FeatureMap) -> None:
        super().__init__()
        self.feature_map = feature_map
        self.register_buffer("weights", torch.zeros(0, 0, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weights.numel() == 0:
            raise RuntimeError("the KRR head is not fitted yet: train the strategy on an experience first")
        features = self.feature_map(x.reshape(x.shape[0], -1).to(torch.float64))
        return (features @ self.weights.T).to(torch.float32)


class KRRStrategy(ClosedFormTemplate):
    """Continual KRR on a fixed feature map: ``train(experience)`` absorbs the data into a memory and refits the head.

    ``model`` is a ``KRRHead`` (a torch module giving class scores), so
    Avalanche's evaluation plugins, metrics and loggers work unchanged;
    ``train`` runs one closed-form pass per experience (no minibatch
    iterations, no optimizer).

    Memories:

    - ``"moments"`` (default): ``memory`` is a ``distillmem.MomentMemory``.
      With ``max_points=None`` the head after every experience equals KRR
      fitted jointly on all data seen so far, for every lambda, and the
      memory never exceeds p points ((p, p + k) float64) however long the
      stream. ``max_points=r`` keeps at most r points (``shrink`` as in
      MomentMemory), trading exactness for size.
    - ``"sketch"``: ``memory`` is a ``distillmem.sketch.GramSketch``: the
      Gram's diagonal exactly, its top ``max_points`` eigenpairs as rows, and
      k rows of cross moments: with ``correction=True`` (default) R - C, the
      cross moments Phi^T T less the correction of the heads at ``reg`` that
      each truncation changed (the sketch is folded: R and C are not kept
      apart), without it R exactly. So ``max_points`` counts the eigen-rows,
      and the memory holds max_points + k + 1 rows of p either way. Exact
      when ``max_points`` is None.
    - ``"per-class"``: the paper's per-class set, for comparison: after each
      experience KRR is refitted on the set plus the new data and distilled
      again to ``ipc`` points per class seen (``memory`` is that
      ``DistilledSet``, in the local class ids ``memory_classes_``). It
      reproduces the refitted head, not the joint one, so it forgets.

    Parameters
    ----------
    feature_map : FeatureMap
        phi on flattened inputs (e.g. ``RandomFCNN(in_features=784)``), or a
        frozen backbone through ``ModuleMap``.
    reg : float or "auto"
        lambda; ``"auto"`` picks it after every experience from the memory
        (``"moments"`` only) by generalised cross-validation over ``reg_grid``,
        which needs only the memory's spectrum and the number of samples.
    max_points, shrink : see MomentMemory.
    memory : {"moments", "sketch", "per-class"}
    correction : bool
        ``"sketch"`` only: fold the truncation correction into the k rows of
        cross moments (no extra rows).
    ipc : int
        Points per class of the ``"per-class"`` memory.
    n_classes : int, optional
        k; default read from the first experience's benchmark.
    reg_grid : sequence of float, optional
        Candidates for ``reg="auto"``; default ``REG_GRID``.
    train_mb_size, eval_mb_size, device, plugins, evaluator, eval_every
        As for Avalanche's templates.

    Attributes
    ----------
    memory : MomentMemory or GramSketch or DistilledSet or None
    reg_ : float
        The lambda of the current head.
    """

    def __init__(
        self,
        *,
        feature_map: FeatureMap,
        reg: float | str = 1.0,
        max_points: int | None = None,
        shrink: str = "frequent-directions",
        memory: str = "moments",
        correction: bool = True,
        ipc: int = 10,
        n_classes: int | None = None,
        reg_grid: Sequence[float] | None = None,
        train_mb_size: int = 1024,
        eval_mb_size: int = 1024,
        device: str | torch.device = "cpu",
        plugins: Sequence[Any] | None = None,
        evaluator: Any = default_evaluator,
        eval_every: int = -1,
    ) -> None:
        if memory not in MEMORIES:
            raise ValueError(f"memory must be one of {MEMORIES}, got {memory!r}")
        if isinstance(reg, str):
            if reg != "auto":
                raise ValueError(f'reg must be a float >= 0 or "auto", got {reg!r}')
            if memory != "moments":
                raise ValueError(f'reg="auto" selects lambda from a moments memory, not memory={memory!r}; use a fixed reg')
        elif isinstance(reg, bool) or not (isinstance(reg, (int, float)) and math.isfinite(reg) and reg >= 0):
            raise ValueError(f'reg must be a float >= 0 or "auto", got {reg!r}')
        if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1:
            raise ValueError(f"ipc must be an integer >= 1, got {ipc!r}")
        if max_points is not None and (isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 1):
            raise ValueError(f"max_points must be None or an integer >= 1, got {max_points!r}")
        if shrink not in SHRINKS:
            raise ValueError(f"shrink must be one of {SHRINKS}, got {shrink!r}")
        grid = REG_GRID if reg_grid is None else tuple(float(r) for r in reg_grid)
        if not grid or min(grid) < 0 or not all(math.isfinite(r) for r in grid):
            raise ValueError(f"reg_grid must be a non-empty sequence of finite values >= 0, got {reg_grid!r}")
        super().__init__(
            model=KRRHead(feature_map),
            feature_map=feature_map,
            n_classes=n_classes,
            train_mb_size=train_mb_size,
            eval_mb_size=eval_mb_size,
            device=device,
            plugins=plugins,
            evaluator=evaluator,
            eval_every=eval_every,
        )
        self.reg = reg
        self.max_points = max_points
        self.shrink = shrink
        self.memory_kind = memory
        self.correction = bool(correction)
        self.ipc = ipc
        self.reg_grid = grid
        self.memory: dm.MomentMemory | GramSketch | dm.DistilledSet | None = None
        self.memory_classes_: tuple[int, ...] = ()

    # -- the pure update --------------------------------------------------------------
    def absorb(self, data: ExperienceData) -> None:
        """Fold an experience's samples into the memory and refit the head; nothing changes on error."""
        k = self._checked_n_classes(data)
        check_fits(self.feature_map, data)
        x = data.x.reshape(data.x.shape[0], -1).to(torch.float64)
        if self.memory_kind == "moments":
            memory = self.memory
            if memory is None:
                memory = dm.MomentMemory(
                    self.feature_map, k, max_points=self.max_points, shrink=self.shrink, device=self.device
                )
            # One update per experience, so a budget is enforced once, after the whole experience; the
            # memory only changes once the update has succeeded.
            memory.update(x, data.y)
            reg = select_reg(memory, self.reg_grid) if self.reg == "auto" else float(self.reg)
            weights = memory.fit_krr(reg).weights_
            classes: tuple[int, ...] = ()
        elif self.memory_kind == "sketch":
            if self.memory is None:
                # reg: the sketch keeps the correction of the heads it truncates under, at the strategy's lambda.
                memory = GramSketch(self.feature_map, k, rank=self.max_points, reg=self.sketch_reg,
                                    fold=self.correction, device=self.device)
            else:
                # update rebinds the sketch's state and never writes into its tensors, so the current sketch is
                # untouched if anything fails. One truncation per experience, under the head of everything seen:
                # sketching the experience alone first (then merging) truncated twice, the first time under a head
                # of its own classes only, and was less accurate (experiments/continual_bytes.py).
                memory = copy.copy(self.memory)
            memory.update(x, data.y)
            reg = float(self.reg)
            weights = memory.fit_krr(reg).weights_
            classes = ()
        else:
            memory, classes, weights = self._per_class_update(x, data.y, k)
            reg = float(self.reg)
        self.memory, self.memory_classes_, self.reg_ = memory, classes, reg
        self.model.weights = weights.to(self.model.weights.device)

    def _per_class_update(self, x: torch.Tensor, y: torch.Tensor, k: int):
        seen = sorted(set(self.memory_classes_) | set(torch.unique(y).tolist()))
        labels = torch.searchsorted(torch.tensor(seen), y)
        targets = torch.nn.functional.one_hot(labels, len(seen)).to(torch.float64)
        if self.memory is not None:
            old = self.memory
            remap = torch.searchsorted(torch.tensor(seen), torch.tensor(self.memory_classes_))
            old_targets = torch.zeros(len(old), len(seen), dtype=torch.float64)
            old_targets[:, remap] = old.y
            x = torch.cat([old.x, x])
            targets = torch.cat([old_targets, targets])
            labels = torch.cat([remap[old.labels], labels])
        teacher = dm.KRR(self.feature_map, reg=float(self.reg), n_classes=len(seen)).fit(x, targets)
        # The teacher sees the old points' soft targets; the real-init references are chosen by class.
        ipc = min(self.ipc, int(torch.bincount(labels, minlength=len(seen)).min()))
        distilled = dm.distill(x, labels, ipc=ipc, teacher=teacher, init="real")
        weights = torch.zeros(k, teacher.weights_.shape[1], dtype=torch.float64)
        weights[seen] = teacher.weights_
        return distilled, tuple(seen), weights

    @property
    def sketch_reg(self) -> float | None:
        """lambda of the sketch's correction, None without one."""
        return float(self.reg) if self.correction else None

    # -- sizes --------------------------------------------------------------------------
    @property
    def memory_nbytes(self) -> int:
        """Bytes of the memory's state (points and targets, float64)."""
        if self.memory is None:
            return 0
        if isinstance(self.memory, GramSketch):
            return self.memory.nbytes
        if isinstance(self.memory, dm.MomentMemory):
            tensors = (self.memory.features_, self.memory.targets_)
        else:
            tensors = (self.memory.x, self.memory.y, self.memory.labels)
        return sum(t.element_size() * t.numel() for t in tensors)

    @property
    def memory_points(self) -> int:
        if self.memory is None:
            return 0
        if isinstance(self.memory, GramSketch):
            return self.memory.sketch_.shape[0]  # eigen-rows; the k rows of cross moments come beside them
        return self.memory.n_points if isinstance(self.memory, dm.MomentMemory) else len(self.memory)


def select_reg(memory: dm.MomentMemory, grid: Sequence[float]) -> float:
    """lambda of the grid minimising generalised cross-validation, from the memory alone.

    With the canonical rows diag(s) V^T and targets t_i (rows of U^T T) of
    one-hot labels (||T||^2 = n), the residual of the fit on the data is
    RSS = n - sum ||t_i||^2 + sum (lambda / (s_i^2 + lambda))^2 ||t_i||^2 and
    its degrees of freedom sum s_i^2 / (s_i^2 + lambda); GCV = RSS / (1 - dof/n)^2.
    """
    n = float(memory.n_seen_)
    eig = memory.features_.square().sum(dim=1)
    mass = memory.targets_.square().sum(dim=1)
    best, best_score = None, math.inf
    for reg in grid:
        shrink = reg / (eig + reg) if reg > 0 else torch.zeros_like(eig)
        dof = float((1 - shrink).sum())
        if dof >= n:
            continue
        rss = n - float(mass.sum()) + float((shrink.square() * mass).sum())
        score = rss / (1 - dof / n) ** 2
        if score < best_score:
            best, best_score = float(reg), score
    if best is None:
        raise ValueError(f"every lambda of the grid fits the {int(n)} samples exactly; give a larger reg_grid")
    return best
