"""Random deep linear network phi(x) = W_L ... W_1 x (docs/math.md §7).

A deep linear map is the composed matrix M = W_L ... W_1 of shape (p, d). When
M has rank p (no layer narrower than p) the map is surjective and ``preimage``
is the minimum-norm least-squares solve. An expanding map (p > rank M, e.g.
d < p) is injective but not surjective: its features fill only Range(M). For
such maps use :func:`distill_deep_linear`, the k-point route of docs/math.md
§7.2: when W was fitted on features of this same map, Range(W^T) lies in
Range(M) and m = k points suffice.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .._solvers import pinv
from .._validation import check_int
from .base import FeatureMap, check_width, layer_widths

#: Default tolerance on ||(I - M M^+) W^T||_F / ||W^T||_F in distill_deep_linear.
RANGE_TOLERANCE = 1e-8


class RandomLinear(FeatureMap):
    """phi(x) = W_L ... W_1 x, frozen, no bias, no activation.

    Each W_l of shape (d_l, d_{l-1}) has entries N(0, 1/d_{l-1}), drawn in
    float64 from ``seed``. Any widths are allowed; with a layer wider than
    ``rank(M)`` (for instance d < p) the map is not surjective and
    ``preimage`` raises; :func:`distill_deep_linear` distils such maps exactly.

    Parameters
    ----------
    in_features : int
        d, the input width.
    widths : sequence of int, optional
        (d_1, ..., d_L); default one square layer of width ``in_features``.
    seed : int

    Attributes
    ----------
    composed : torch.Tensor of shape (p, d), float64
        M = W_L ... W_1.
    rank : int
        Numerical rank of M (torch's pinv tolerance).
    """

    name = "linear"

    def __init__(self, in_features: int, widths: Sequence[int] | None = None, seed: int = 0) -> None:
        super().__init__()
        in_features, widths = layer_widths(in_features, widths)
        self.in_features = in_features
        self.widths = widths
        self._seed = check_int(seed, "seed")
        gen = torch.Generator().manual_seed(self._seed)
        fan_ins = (in_features,) + widths[:-1]
        composed = torch.eye(in_features, dtype=torch.float64)
        for i, (fan_in, width) in enumerate(zip(fan_ins, widths)):
            weight = torch.randn(width, fan_in, generator=gen, dtype=torch.float64) / fan_in**0.5
            self.register_buffer(f"weight{i}", weight)
            composed = weight @ composed
        self.register_buffer("composed", composed)
        self.rank = int(torch.linalg.matrix_rank(composed, rtol=max(composed.shape) * torch.finfo(torch.float64).eps))

    def out_features(self, in_features: int) -> int:
        return self.widths[-1]

    @property
    def surjective(self) -> bool:
        return self.rank == self.widths[-1]

    def check_input(self, x: torch.Tensor) -> None:
        check_width(x, self.in_features, "RandomLinear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self._cast("composed", x).T

    def preimage(self, features: torch.Tensor) -> torch.Tensor:
        """Minimum-norm x with M x = f for every row f; needs rank M = p."""
        if not self.surjective:
            raise ValueError(
                f"RandomLinear with in_features={self.in_features} and widths={list(self.widths)} has "
                f"rank {self.rank} < p={self.widths[-1]}, so it is not surjective and a general feature "
                "matrix has no preimage; use distillmem.distill_deep_linear(teacher)"
            )
        check_width(features, self.widths[-1], "RandomLinear.preimage")
        right_inverse = pinv(self.composed.to(features.device)).to(features.dtype)  # (d, p)
        return features @ right_inverse.T

    def range_residual(self, weights: torch.Tensor) -> float:
        """||(I - M M^+) W^T||_F / ||W^T||_F for W of shape (k, p): 0 when every row of W is in Range(M)."""
        m = self.composed.to(weights.device)
        w_t = weights.to(torch.float64).T
        outside = w_t - m @ (pinv(m) @ w_t)
        norm = float(torch.linalg.norm(w_t))
        return float(torch.linalg.norm(outside)) / norm if norm > 0 else 0.0

    def spec_params(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "widths": list(self.widths)}
