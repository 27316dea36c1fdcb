"""The Avalanche template of the closed-form learners: no optimizer, one pure ``absorb`` per experience."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from distillmem.features import FeatureMap

from .data import ExperienceData, read_experience


class ClosedFormTemplate(SupervisedTemplate):
    """A ``SupervisedTemplate`` whose training epoch is ``absorb(experience data)``, solved in closed form.

    Subclasses implement ``absorb(data)``; this class holds what they share:
    the checks of ``feature_map`` and ``n_classes``, no optimizer, one epoch,
    and ``n_classes`` read from the benchmark when it was not given.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        feature_map: FeatureMap,
        n_classes: int | None,
        train_mb_size: int,
        eval_mb_size: int,
        device: str | torch.device,
        plugins: Sequence[Any] | None,
        evaluator: Any,
        eval_every: int,
    ) -> None:
        if not isinstance(feature_map, FeatureMap):
            raise TypeError(f"feature_map must be a distillmem FeatureMap, got {type(feature_map).__name__}")
        if n_classes is not None and (isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1):
            raise ValueError(f"n_classes must be None or an integer >= 1, got {n_classes!r}")
        super().__init__(
            model=model,
            optimizer=None,
            train_mb_size=train_mb_size,
            train_epochs=1,
            eval_mb_size=eval_mb_size,
            device=device,
            plugins=plugins,
            evaluator=evaluator,
            eval_every=eval_every,
        )
        self.feature_map = feature_map
        self.n_classes = n_classes

    def make_optimizer(self, **kwargs: Any) -> None:
        """No optimizer: the head is solved in closed form."""

    def training_epoch(self, **kwargs: Any) -> None:
        declared = getattr(self.experience, "classes_in_this_experience", None)
        self.absorb(read_experience(self.adapted_dataset, classes=declared))

    def absorb(self, data: ExperienceData) -> None:
        raise NotImplementedError

    def _checked_n_classes(self, data: ExperienceData) -> int:
        """k, from the constructor or the benchmark; raises if ``data`` has a class >= k."""
        if self.n_classes is None:
            k = getattr(getattr(self.experience, "benchmark", None), "n_classes", None)
            if k is None:
                raise ValueError(f"n_classes is unknown: pass {type(self).__name__}(..., n_classes=k)")
            self.n_classes = int(k)
        if int(data.y.max()) >= self.n_classes:
            raise ValueError(f"the experience has class {int(data.y.max())}, outside n_classes={self.n_classes}")
        return self.n_classes
