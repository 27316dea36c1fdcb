"""phi(x) = x: KRR becomes linear ridge regression (LRR)."""

from __future__ import annotations

from typing import Any

import torch

from .._validation import check_int
from .base import FeatureMap, check_width


class Identity(FeatureMap):
    """The identity map, p = d.

    Parameters
    ----------
    in_features : int, optional
        Expected input width; ``None`` accepts any width.
    """

    name = "identity"

    def __init__(self, in_features: int | None = None) -> None:
        super().__init__()
        self.in_features = None if in_features is None else check_int(in_features, "in_features", minimum=1)

    def out_features(self, in_features: int) -> int:
        return in_features

    @property
    def surjective(self) -> bool:
        return True

    def check_input(self, x: torch.Tensor) -> None:
        if self.in_features is not None:
            check_width(x, self.in_features, "Identity")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def preimage(self, features: torch.Tensor) -> torch.Tensor:
        return features

    def spec_params(self) -> dict[str, Any]:
        return {"in_features": self.in_features}
