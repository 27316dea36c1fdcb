"""NCMStrategy: nearest class mean on a fixed feature map (SimpleCIL's prototype head), as an Avalanche strategy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from avalanche.training.plugins.evaluation import default_evaluator
from torch import nn

from distillmem.features import FeatureMap

from .data import ExperienceData, check_fits
from .template import ClosedFormTemplate

METRICS = ("cosine", "euclidean")


class NCMHead(nn.Module):
    """Class scores from class means: inputs (n, ...) -> (n, k) float32; classes not seen score -inf.

    ``metric="cosine"``: cosine similarity between phi(x) and each class mean
    (SimpleCIL's prototype classifier); ``"euclidean"``: minus the squared
    distance to each class mean.
    """

    def __init__(self, feature_map: FeatureMap, metric: str) -> None:
        super().__init__()
        self.feature_map = feature_map
        self.metric = metric
        self.register_buffer("means", torch.zeros(0, 0, dtype=torch.float64))
        self.register_buffer("seen", torch.zeros(0, dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.seen.any()):
            raise RuntimeError("the NCM head has no class means yet: train the strategy on an experience first")
        features = self.feature_map(x.reshape(x.shape[0], -1).to(torch.float64))
        if self.metric == "cosine":
            scores = nn.functional.normalize(features, dim=1) @ nn.functional.normalize(self.means, dim=1).T
        else:
            scores = -torch.cdist(features, self.means).square()
        return scores.masked_fill(~self.seen, -torch.inf).to(torch.float32)


class NCMStrategy(ClosedFormTemplate):
    """A nearest-class-mean learner on a fixed map: ``train(experience)`` adds the experience to per-class sums.

    The memory is the per-class sums of phi(x) (k, p) float64 and counts (k,)
    int64, so the head after every experience equals the class means of all
    data seen, whatever the order. With a pretrained map and the cosine
    metric this is SimpleCIL (Zhou et al., 2024) without adaptation.

    Parameters
    ----------
    feature_map : FeatureMap
        phi on flattened inputs; ``Identity(p)`` on a benchmark of features.
    metric : {"cosine", "euclidean"}
    n_classes : int, optional
        k; default read from the first experience's benchmark.
    train_mb_size, eval_mb_size, device, plugins, evaluator, eval_every
        As for Avalanche's templates.

    Attributes
    ----------
    sums_ : torch.Tensor of shape (k, p), float64
    counts_ : torch.Tensor of shape (k,), int64
    """

    def __init__(
        self,
        *,
        feature_map: FeatureMap,
        metric: str = "cosine",
        n_classes: int | None = None,
        train_mb_size: int = 1024,
        eval_mb_size: int = 1024,
        device: str | torch.device = "cpu",
        plugins: Sequence[Any] | None = None,
        evaluator: Any = default_evaluator,
        eval_every: int = -1,
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        super().__init__(
            model=NCMHead(feature_map, metric),
            feature_map=feature_map,
            n_classes=n_classes,
            train_mb_size=train_mb_size,
            eval_mb_size=eval_mb_size,
            device=device,
            plugins=plugins,
            evaluator=evaluator,
            eval_every=eval_every,
        )
        self.metric = metric

    def absorb(self, data: ExperienceData) -> None:
        """Add an experience's samples to the per-class sums and refresh the means; nothing changes on error."""
        k = self._checked_n_classes(data)
        check_fits(self.feature_map, data)
        with torch.inference_mode():
            features = self.feature_map(data.x.reshape(data.x.shape[0], -1).to(torch.float64)).to(torch.float64)
        sums = torch.zeros(k, features.shape[1], dtype=torch.float64) if not hasattr(self, "sums_") else self.sums_.clone()
        counts = torch.zeros(k, dtype=torch.int64) if not hasattr(self, "counts_") else self.counts_.clone()
        if sums.shape[1] != features.shape[1]:
            raise ValueError(f"the experience has {features.shape[1]} features, the memory holds {sums.shape[1]}")
        sums.index_add_(0, data.y, features.cpu())
        counts += torch.bincount(data.y, minlength=k)
        self.sums_, self.counts_ = sums, counts
        seen = counts > 0
        means = torch.zeros_like(sums)
        means[seen] = sums[seen] / counts[seen, None]
        self.model.means, self.model.seen = means.to(self.device), seen.to(self.device)

    @property
    def memory_nbytes(self) -> int:
        """Bytes of the memory: the sums (k, p) float64 and the counts (k,) int64."""
        if not hasattr(self, "sums_"):
            return 0
        return self.sums_.numel() * 8 + self.counts_.numel() * 8
