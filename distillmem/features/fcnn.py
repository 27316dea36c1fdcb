"""Random fully-connected LeakyReLU network with an exact layer-wise inverse."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .._validation import check_int, check_real
from .base import FeatureMap, check_width, layer_widths


class RandomFCNN(FeatureMap):
    """phi(x) = LeakyReLU(W_L ... LeakyReLU(W_1 x)), frozen, no bias.

    Each W_l of shape (d_l, d_{l-1}) has entries N(0, 1/d_{l-1}), drawn from
    ``seed``. With non-increasing widths d_0 >= d_1 >= ... the
    map is surjective and ``preimage`` inverts it layer by layer: LeakyReLU
    with slope 1/alpha, then the minimum-norm least-squares solve of each
    linear layer. The paper's FCNN is ``widths=(in_features,)``.

    Parameters
    ----------
    in_features : int
        d, the input width.
    widths : sequence of int, optional
        (d_1, ..., d_L); default one layer of width ``in_features``.
    negative_slope : float
        alpha > 0 of the LeakyReLU.
    seed : int
    """

    name = "fcnn"

    def __init__(
        self,
        in_features: int,
        widths: Sequence[int] | None = None,
        negative_slope: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        in_features, widths = layer_widths(in_features, widths)
        # > 0 keeps the map invertible.
        self.negative_slope = check_real(negative_slope, "negative_slope", positive=True)
        self.in_features = in_features
        self.widths = widths
        self._seed = check_int(seed, "seed")
        gen = torch.Generator().manual_seed(self._seed)
        fan_ins = (in_features,) + widths[:-1]
        for i, (fan_in, width) in enumerate(zip(fan_ins, widths)):
            # Drawn as float32 like torch's nn.init.normal_ after manual_seed(seed), so
            # seed s gives the paper's FCNN for seed s; kept in float64 for the inverse.
            std = float(1.0 / torch.sqrt(torch.tensor(float(fan_in))))
            weight = torch.empty(width, fan_in).normal_(0.0, std, generator=gen)
            self.register_buffer(f"weight{i}", weight.to(torch.float64))

    def out_features(self, in_features: int) -> int:
        return self.widths[-1]

    @property
    def surjective(self) -> bool:
        fan_ins = (self.in_features,) + self.widths[:-1]
        return all(w <= f for f, w in zip(fan_ins, self.widths))

    def check_input(self, x: torch.Tensor) -> None:
        check_width(x, self.in_features, "RandomFCNN")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(len(self.widths)):
            # In place on the fresh product: no second (n, p) buffer (autograd allows it for slope > 0).
            x = F.leaky_relu_(x @ self._cast(f"weight{i}", x).T, self.negative_slope)
        return x

    def preimage(self, features: torch.Tensor) -> torch.Tensor:
        if not self.surjective:
            raise ValueError(
                f"RandomFCNN with in_features={self.in_features} and widths={list(self.widths)} "
                "widens a layer, so it is not surjective and has no exact preimage"
            )
        check_width(features, self.widths[-1], "RandomFCNN.preimage")
        h = features
        for i in reversed(range(len(self.widths))):
            pre_activation = F.leaky_relu(h, 1.0 / self.negative_slope)
            weight = self._cast(f"weight{i}", h)
            # Solve h W^T = a; pinv gives the minimum-norm h for a narrowing layer.
            if weight.shape[0] == weight.shape[1]:
                h = torch.linalg.solve(weight, pre_activation.T).T
            else:
                h = pre_activation @ torch.linalg.pinv(weight).T
        return h

    def spec_params(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "widths": list(self.widths),
            "negative_slope": self.negative_slope,
        }
