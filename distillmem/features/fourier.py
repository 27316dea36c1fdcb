"""Random Fourier features for the Gaussian kernel, with an arccos preimage."""

from __future__ import annotations

import math
from typing import Any

import torch

from .._validation import check_int, check_real
from .base import FeatureMap, check_width

# arccos is ill-conditioned at +-1, so rescaled features stop this far inside.
_RANGE_MARGIN = 1e-6


class RandomFourier(FeatureMap):
    """phi(x) = sqrt(2/p) cos(A x + b), approximating exp(-|x - x'|^2 / (2 sigma^2)).

    A of shape (p, d) has entries N(0, 1/sigma^2) and b entries pi * U[0, 1),
    both drawn in float64 from ``seed`` (the paper's sigma^2 = 1000). For
    p <= d and rank A = p the map is surjective onto [-sqrt(2/p), sqrt(2/p)]^p
    and ``preimage`` returns x = pinv(A) (arccos(sqrt(p/2) f) - b).

    Parameters
    ----------
    in_features : int
        d.
    out_features : int, optional
        p; default d.
    sigma : float
        Kernel bandwidth.
    seed : int
    """

    name = "rff"

    def __init__(
        self,
        in_features: int,
        out_features: int | None = None,
        sigma: float = math.sqrt(1000.0),
        seed: int = 0,
    ) -> None:
        super().__init__()
        in_features = check_int(in_features, "in_features", minimum=1)
        out_features = in_features if out_features is None else check_int(out_features, "out_features", minimum=1)
        self.in_features = in_features
        self.p = out_features
        self.sigma = check_real(sigma, "sigma", positive=True)
        self._seed = check_int(seed, "seed")
        gen = torch.Generator().manual_seed(self._seed)
        self.register_buffer("freqs", torch.randn(out_features, in_features, generator=gen, dtype=torch.float64) / self.sigma)
        self.register_buffer("phases", math.pi * torch.rand(out_features, generator=gen, dtype=torch.float64))

    def out_features(self, in_features: int) -> int:
        return self.p

    @property
    def surjective(self) -> bool:
        return self.p <= self.in_features

    def check_input(self, x: torch.Tensor) -> None:
        check_width(x, self.in_features, "RandomFourier")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = torch.addmm(self._cast("phases", x), x, self._cast("freqs", x).T)
        return math.sqrt(2.0 / self.p) * torch.cos(angles)

    def range_scale(self, features: torch.Tensor) -> float:
        peak = float(features.abs().max()) * math.sqrt(self.p / 2.0)
        if peak == 0.0:
            return 1.0
        return peak * (1.0 + _RANGE_MARGIN)

    def preimage(self, features: torch.Tensor) -> torch.Tensor:
        if not self.surjective:
            raise ValueError(
                f"RandomFourier with out_features={self.p} > in_features={self.in_features} "
                "is not surjective and has no exact preimage"
            )
        check_width(features, self.p, "RandomFourier.preimage")
        cosines = math.sqrt(self.p / 2.0) * features
        if cosines.abs().max() > 1.0:
            raise ValueError(
                "features lie outside the range of RandomFourier (|sqrt(p/2) f| > 1); "
                "divide them by range_scale(features) first"
            )
        angles = torch.arccos(cosines) - self._cast("phases", features)
        freqs = self._cast("freqs", features)
        if self.p == self.in_features:
            return torch.linalg.solve(freqs, angles.T).T
        return angles @ torch.linalg.pinv(freqs).T

    def spec_params(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.p, "sigma": self.sigma}
