"""DistilledBuffer: an Avalanche storage policy that keeps closed-form distilled points per class."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from avalanche.benchmarks.utils import AvalancheDataset, concat_datasets
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as tensor_dataset
from avalanche.benchmarks.utils.data_attribute import TensorDataAttribute
from avalanche.benchmarks.utils.flat_data import FlatData
from avalanche.training.storage_policy import ExemplarsBuffer

import distillmem as dm
from distillmem.features import FeatureMap, Identity

from .data import ExperienceData, check_fits, read_experience


@dataclass(frozen=True)
class DistilledGroup:
    """The distilled points of one experience: ``ipc`` per class, with its classes and task label.

    ``distilled`` works in local class ids 0..len(classes)-1 (its KRR head is
    the experience's, on the experience's classes); ``classes`` maps them to
    the global ids. The head itself is not kept: KRR on the points gives it back.
    """

    distilled: dm.DistilledSet
    classes: tuple[int, ...]
    task_label: int

    @property
    def ipc(self) -> int:
        return len(self.distilled) // len(self.classes)

    def global_labels(self) -> torch.Tensor:
        """(m,) int64 class ids of the points."""
        return torch.tensor(self.classes, dtype=torch.int64)[self.distilled.labels]

    def soft_targets(self, n_classes: int) -> torch.Tensor:
        """(m, n_classes) float32: the set's targets in the global class columns, zero elsewhere."""
        soft = torch.zeros(len(self.distilled), n_classes, dtype=torch.float32)
        soft[:, list(self.classes)] = self.distilled.y.to(torch.float32)
        return soft


class DistilledBuffer(ExemplarsBuffer):
    """Replay memory of synthetic points distilled in closed form, ``max_size`` points in all.

    After each experience its classes are distilled with ``distillmem.distill``
    (Chen, Huang & Weng 2024): ``ipc`` points per class whose KRR head (on
    ``feature_map`` at ``reg``) equals the KRR head of the experience's data.
    The budget is split evenly over the (experience, class) groups seen:
    ``ipc = max_size // groups`` (the remainder, fewer than ``groups`` points,
    stays unused). When new classes arrive, older groups shrink by
    re-distilling their own points to fewer points; that keeps their KRR head,
    since a distilled set's head is the head it was distilled from.

    Points live in the model's input space with the inputs' shape (e.g.
    (C, H, W)), so every Avalanche strategy can replay them through
    ``ReplayPlugin``. Items are ``(x, y, t)`` like the stream's, ``y`` the
    class the point stands for; the distilled soft labels (the teacher's
    scores, (m, n_classes)) are the data attribute ``soft_targets`` of
    ``buffer`` (in ``__getitem__`` too with ``soft_targets_in_batch=True``,
    for a strategy that reads them, as DER reads its logits).

    The default map is ``Identity()`` with ``init="real"``: the points are
    then the closest exact solution to real images of the experience, and stay
    near them; nonlinear maps such as ``RandomFCNN`` reproduce the KRR head as
    exactly but their preimages are far from any image (see the README).

    Parameters
    ----------
    max_size : int
        Points in all, at least one per (experience, class) group.
    feature_map : FeatureMap, optional
        A surjective map on flattened inputs (``Identity``, ``RandomFCNN``,
        ``RandomFourier`` with p <= d); default ``Identity()``.
    reg : float
        lambda of the KRR head each experience is distilled from. A large
        lambda keeps the points closest to real images (the head is then
        dominated by class sums of the inputs); the default suits experiences
        of a few hundred to a few thousand normalised images (see the README).
    init : {"real", "noise"}
        Start of the closed form (``distillmem.distill``).
    soft_labels : bool
        Keep the teacher's soft labels (with ``init="real"``), else one-hot.
    n_classes : int, optional
        Width of ``soft_targets``; default the largest class id seen + 1.
    soft_targets_in_batch : bool
        Return ``soft_targets`` as a fourth item of each sample.
    fit_samples : int, optional
        Fit each experience's KRR head on at most this many samples per class,
        drawn at random (only those are read; the checks for non-finite
        inputs then cover only them). The points reproduce the head of that
        class-balanced sample, not of the whole experience. Default: all samples.
    seed : int
        Seeds the choice of real points and of the ``fit_samples`` sample.

    Attributes
    ----------
    groups : list of DistilledGroup
        One per experience absorbed, in order.
    update_seconds : float
        Wall time spent so far in successful updates (distilling and
        shrinking), to set against a strategy's training time.
    """

    def __init__(
        self,
        max_size: int,
        *,
        feature_map: FeatureMap | None = None,
        reg: float = 1e4,
        init: str = "real",
        soft_labels: bool = True,
        n_classes: int | None = None,
        soft_targets_in_batch: bool = False,
        fit_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        _check_positive_int(max_size, "max_size")
        if feature_map is not None and not isinstance(feature_map, FeatureMap):
            raise TypeError(f"feature_map must be a distillmem FeatureMap, got {type(feature_map).__name__}")
        if feature_map is not None and not feature_map.surjective:
            raise ValueError(f"feature_map {feature_map!r} is not surjective: distilled points would have no preimage")
        if isinstance(reg, bool) or not (isinstance(reg, (int, float)) and math.isfinite(reg) and reg >= 0):
            raise ValueError(f"reg must be a finite float >= 0, got {reg!r}")
        if init not in ("real", "noise"):
            raise ValueError(f'init must be "real" or "noise", got {init!r}')
        if n_classes is not None:
            _check_positive_int(n_classes, "n_classes")
        if fit_samples is not None:
            _check_positive_int(fit_samples, "fit_samples")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an integer, got {seed!r}")
        super().__init__(max_size)
        self.feature_map = Identity() if feature_map is None else feature_map
        self.reg = float(reg)
        self.init = init
        self.soft_labels = bool(soft_labels)
        self.n_classes = n_classes
        self.soft_targets_in_batch = bool(soft_targets_in_batch)
        self.fit_samples = fit_samples
        self.seed = seed
        self.groups: list[DistilledGroup] = []
        self.input_shape: tuple[int, ...] | None = None
        self.update_seconds = 0.0

    # -- Avalanche's storage-policy interface ---------------------------------
    def post_adapt(self, agent_state: Any, exp: Any) -> None:
        """Distil the experience just trained on (called by ReplayPlugin after each experience)."""
        self.update_from_dataset(exp.dataset, classes=getattr(exp, "classes_in_this_experience", None))

    def resize(self, strategy: Any, new_size: int) -> None:
        """Set ``max_size`` and shrink every group to the new share (re-distilling, so heads are kept)."""
        _check_positive_int(new_size, "new_size")
        ipc = self._share(new_size, self._n_groups())
        self.groups = [self._shrink(group, ipc) for group in self.groups]
        self.max_size = new_size
        self._rebuild()

    # -- the pure update ------------------------------------------------------------
    def update_from_dataset(self, dataset: AvalancheDataset, *, classes: Sequence[int] | None = None) -> None:
        """Distil a dataset of ``(x, y, t)`` items into a new group and shrink the older ones.

        ``classes`` are the classes the experience declares (e.g.
        ``classes_in_this_experience``); every one must have samples and no
        sample may have another label. On any error the buffer is unchanged.
        """
        start = time.perf_counter()
        data = self._read(dataset, classes)
        self._check_fits(data)
        exp_classes = tuple(int(c) for c in torch.unique(data.y).tolist())
        if self.n_classes is not None and exp_classes[-1] >= self.n_classes:
            raise ValueError(f"the experience has class {exp_classes[-1]}, outside n_classes={self.n_classes}")
        ipc = self._share(self.max_size, self._n_groups() + len(exp_classes))
        counts = torch.bincount(data.y)[list(exp_classes)]
        # A class with fewer samples than its share keeps all of them at most.
        new_group = self._distill_experience(data, exp_classes, min(ipc, int(counts.min())))
        shrunk = [self._shrink(group, ipc) for group in self.groups]
        # Commit only once every distillation succeeded.
        self.groups = [*shrunk, new_group]
        self.input_shape = data.input_shape
        self._rebuild()
        self.update_seconds += time.perf_counter() - start

    # -- sizes ----------------------------------------------------------------------
    @property
    def n_points(self) -> int:
        """Synthetic points held."""
        return sum(len(g.distilled) for g in self.groups)

    @property
    def nbytes(self) -> int:
        """Bytes of the state held: the points (float64), their targets (float64) and labels (int64)."""
        return sum(t.element_size() * t.numel() for g in self.groups for t in (g.distilled.x, g.distilled.y, g.distilled.labels))

    @property
    def classes_seen(self) -> list[int]:
        return sorted({c for g in self.groups for c in g.classes})

    def points_per_class(self) -> dict[int, int]:
        """Points held for each class."""
        counts: dict[int, int] = {}
        for g in self.groups:
            for c in g.classes:
                counts[c] = counts.get(c, 0) + g.ipc
        return counts

    # -- internals ------------------------------------------------------------------
    def _n_groups(self) -> int:
        return sum(len(g.classes) for g in self.groups)

    @staticmethod
    def _share(max_size: int, n_groups: int) -> int:
        if max_size < n_groups:
            raise ValueError(
                f"max_size={max_size} is fewer points than the {n_groups} (experience, class) groups seen: "
                "a distilled buffer needs at least one point per class"
            )
        return max_size // n_groups

    def _read(self, dataset: Any, classes: Sequence[int] | None) -> ExperienceData:
        """The experience's samples: all, or ``fit_samples`` per class at random (reading only those)."""
        if self.fit_samples is None:
            return read_experience(dataset, classes=classes)
        gen = torch.Generator().manual_seed(self.seed + _SAMPLE_STRIDE * len(self.groups))
        targets = getattr(dataset, "targets", None)
        if targets is None or not hasattr(dataset, "subset"):
            data = read_experience(dataset, classes=classes)
            pick = _balanced_sample(data.y, self.fit_samples, gen)
            return ExperienceData(data.x[pick], data.y[pick], data.task_label)
        # Every class present keeps samples, so read_experience's class checks see what the whole dataset has.
        pick = _balanced_sample(torch.as_tensor(list(targets), dtype=torch.int64), self.fit_samples, gen)
        return read_experience(dataset.subset(pick.tolist()), classes=classes)

    def _check_fits(self, data: ExperienceData) -> None:
        if self.input_shape is not None and data.input_shape != self.input_shape:
            raise ValueError(f"the experience's inputs have shape {data.input_shape}, earlier ones had {self.input_shape}")
        check_fits(self.feature_map, data)

    def _distill_experience(self, data: ExperienceData, classes: tuple[int, ...], ipc: int) -> DistilledGroup:
        local = torch.searchsorted(torch.tensor(classes), data.y)
        x = data.x.reshape(data.x.shape[0], -1).to(torch.float64)
        # With reg > 0 the normal equations of the smaller side (a p x p Gram for n >= p, the n x n kernel for
        # n < p; one Cholesky solve) give the head of the SVD that KRR's "auto" picks for mid-sized data, at a
        # fraction of the cost.
        solver = "auto"
        if self.reg > 0:
            solver = "primal" if x.shape[0] >= self.feature_map.out_features(x.shape[1]) else "dual"
        teacher = dm.KRR(self.feature_map, reg=self.reg, n_classes=len(classes), solver=solver)
        teacher.fit(x, local)
        return DistilledGroup(self._distill(x, local, ipc, teacher), classes, data.task_label)

    def _shrink(self, group: DistilledGroup, ipc: int) -> DistilledGroup:
        """The group re-distilled from its own points to ``ipc`` per class (its KRR head is kept)."""
        if group.ipc <= ipc:
            return group
        own = group.distilled
        # KRR on the points at the set's lambda is the experience's head (to rounding), so no head need be stored.
        teacher = dm.KRR(self.feature_map, reg=own.reg, n_classes=len(group.classes)).fit(own.x, own.y)
        return DistilledGroup(self._distill(own.x, own.labels, ipc, teacher), group.classes, group.task_label)

    def _distill(self, x: torch.Tensor, labels: torch.Tensor, ipc: int, teacher: dm.KRR) -> dm.DistilledSet:
        return dm.distill(
            x, labels, ipc=ipc, teacher=teacher, init=self.init, soft_labels=self.soft_labels, seed=self.seed
        )

    def _rebuild(self) -> None:
        """The AvalancheDataset served to strategies: one part per group, each with an int task label."""
        if not self.groups:
            self.buffer = concat_datasets([])
            return
        width = self.n_classes or max(self.classes_seen) + 1
        parts = []
        for g in self.groups:
            x = g.distilled.x.to(torch.float32).reshape(len(g.distilled), *self.input_shape)
            part = tensor_dataset(x, g.global_labels(), task_labels=g.task_label)
            soft = TensorDataAttribute(
                FlatData([g.soft_targets(width)]), name="soft_targets", use_in_getitem=self.soft_targets_in_batch
            )
            parts.append(part.update_data_attribute("soft_targets", soft))
        self.buffer = concat_datasets(parts)


_SAMPLE_STRIDE = 7919  # seeds of successive experiences' samples: seed, seed + stride, ...


def _balanced_sample(labels: torch.Tensor, per_class: int, gen: torch.Generator) -> torch.Tensor:
    """Sorted indices of at most ``per_class`` random samples of each label present."""
    picks = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        picks.append(members[torch.randperm(members.numel(), generator=gen)[:per_class]])
    return torch.cat(picks).sort().values


def _check_positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
