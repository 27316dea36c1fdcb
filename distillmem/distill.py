"""Closed-form distillation for surjective feature maps (Chen, Huang & Weng 2024, Theorems 4.1 / 5.1, Corollary 4.1.1).

The construction is in ``_closed_form`` (docs/math.md §3-§6); this module
gives it the estimator interface and the exact preimage of the map.
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
    resolve_teacher,
    target_features,
    warn_if_inexact,
)
from ._validation import check_int, check_real, resolve_device
from .distilled_set import DistilledSet
from .features import FeatureMap
from .krr import KRR


class KRRDistiller:
    """Distil a labelled dataset into ``ipc`` points per class that give back its KRR model exactly.

    Parameters
    ----------
    feature_map : FeatureMap, optional
        A surjective phi (Identity, RandomFCNN with non-increasing widths,
        RandomFourier with p <= d, RandomConv, a full-rank RandomLinear);
        default the teacher's map, else Identity.
    ipc : int
        Images per class; m = k * ipc points (m may exceed n).
    reg : float or "auto"
        lambda of the original KRR model (only used to fit one when no teacher is given).
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
        Provenance ``method="closed_form"``.
    teacher_ : KRR
        The original model (the one passed to ``fit``, or the one fitted there).
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
        x: Any = None,
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
        ipc, seed, reg_s = self._check_params()
        device = resolve_device(self.device)
        teacher, fmap = resolve_teacher(
            x, y, teacher=teacher, feature_map=self.feature_map, device=device, eval_set=eval_set,
            reg=self.reg, seed=seed, n_classes=self.n_classes, chunk_size=self.chunk_size, progress=self.progress,
        )
        if not fmap.surjective:
            raise ValueError(
                f"feature map {fmap!r} is not surjective (not every feature vector is the image of an input), "
                "so exact distillation has no preimage; use a surjective map (for the random maps: p <= d), "
                "distil the map's features with Identity() (exact in feature space), or use distill_deep_linear / "
                "distill_approximate"
            )
        gen = torch.Generator().manual_seed(seed)
        reference = reference_points(x, y, ipc, teacher, gen, device) if self.init == "real" else None
        solved = target_features(
            fmap, teacher.weights_.to(device), ipc, gen=gen, init=self.init, reference=reference, reg_s=reg_s,
            root=self.root, soft_labels=self.soft_labels, noise_scale=self.noise_scale,
        )
        points = fmap.preimage(solved.features)
        error = refit_error(
            fmap, points, solved.targets, solved.reg, teacher.weights_, chunk_size=self.chunk_size, device=device
        )
        warn_if_inexact(error)
        provenance = record(
            "closed_form", start, dataset=dataset, n=teacher.n_samples_, ipc=ipc, seed=seed, init=self.init,
            teacher_reg=teacher.reg_, reg_s=solved.reg_s, range_scale=solved.range_scale, recovery_error=error,
            extras={"root": self.root, "soft_labels": solved.soft_labels},
        )
        self.teacher_ = teacher
        self.recovery_error_ = error
        self.distilled_ = build_set(
            points, solved.targets, solved.labels, fmap, solved.reg, provenance, like=x, mean=mean, std=std
        )
        return self

    def _check_params(self) -> tuple[int, int, float | str]:
        ipc = check_ipc(self.ipc)
        check_choice(self.init, "init", INITS)
        check_choice(self.root, "root", ROOTS)
        reg_s = check_reg_s(self.reg_s)
        seed = check_int(self.seed, "seed")
        check_real(self.noise_scale, "noise_scale", positive=True)
        return ipc, seed, reg_s


def distill(
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
    seed: int = 0,
    n_classes: int | None = None,
    chunk_size: int = 8192,
    device: str | torch.device | None = None,
    progress: bool = False,
    eval_set: tuple[Any, Any] | None = None,
    dataset: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> DistilledSet:
    """One-shot distillation: ``KRRDistiller(feature_map, ...).fit(x, y, teacher=teacher, ...).distilled_``.

    The parameters are those of :class:`KRRDistiller` and its ``fit``, spelled
    out so that every builder shows the same signature.
    """
    distiller = KRRDistiller(
        feature_map, ipc=ipc, reg=reg, reg_s=reg_s, root=root, init=init, soft_labels=soft_labels,
        noise_scale=noise_scale, seed=seed, n_classes=n_classes, chunk_size=chunk_size, device=device,
        progress=progress,
    )
    return distiller.fit(x, y, teacher=teacher, eval_set=eval_set, dataset=dataset, mean=mean, std=std).distilled_
