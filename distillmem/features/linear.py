"""Random deep linear network phi(x) = W_L ... W_1 x (theory.md section 7).

A deep linear map is the composed matrix M = W_L ... W_1 of shape (p, d). When
M has rank p (no layer narrower than p) the map is surjective and ``preimage``
is the minimum-norm least-squares solve. An expanding map (p > rank M, e.g.
d < p) is injective but not surjective: its features fill only Range(M). For
such maps use :func:`distill_deep_linear`, the k-point route of theory.md
section 7: when W was fitted on features of this same map, Range(W^T) lies in
Range(M) and m = k points suffice.
"""

from __future__ import annotations

import operator
import time
import warnings
from typing import Any, Sequence

import torch

from .._solvers import pinv
from .base import FeatureMap, check_width

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
        if not (_is_int(in_features) and in_features >= 1):
            raise ValueError(f"in_features must be an int >= 1, got {in_features!r}")
        in_features = int(in_features)
        widths = (in_features,) if widths is None else tuple(int(w) for w in widths)
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be a non-empty sequence of positive ints, got {widths!r}")
        self.in_features = in_features
        self.widths = widths
        self._seed = int(seed)
        gen = torch.Generator().manual_seed(self._seed)
        fan_ins = (in_features,) + widths[:-1]
        composed = torch.eye(in_features, dtype=torch.float64)
        for i, (fan_in, width) in enumerate(zip(fan_ins, widths)):
            weight = torch.randn(width, fan_in, generator=gen, dtype=torch.float64) / fan_in**0.5
            self.register_buffer(f"weight{i}", weight)
            composed = weight @ composed
        self.register_buffer("composed", composed)
        self.rank = int(torch.linalg.matrix_rank(composed, rtol=max(composed.shape) * torch.finfo(torch.float64).eps))

    @property
    def seed(self) -> int:
        return self._seed

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
                "matrix has no preimage; use distillmem.features.linear.distill_deep_linear(teacher)"
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


def distill_deep_linear(
    teacher: Any,
    *,
    ipc: int = 1,
    noise_scale: float = 0.1,
    seed: int = 0,
    tol: float = RANGE_TOLERANCE,
    dataset: str | None = None,
):
    """Distil a KRR model on a deep linear map into k * ipc points, also for expanding maps.

    Samples are rows. With W (k, p) the teacher's weights, M (p, d) the
    composed map, one-hot interleaved targets T_S (m, k), Y = T_S^T and
    P = Y^+ Y, this builds (reg_s = 0, Theorems 5.1 / 5.3, theory.md section 7)

        D = Y^+ W + (I - P) Z P_M      (m, p),   P_M = M M^+,
        Phi_S = pinv(D)^T              (m, p),
        X_S = Phi_S (M^+)^T            (m, d).

    With ipc = 1 (m = k) D = Y^+ W and X_S^T = M^+ W^+ Y, the k-point route;
    larger ipc adds noise Z (``noise_scale * std(Y^+ W) * N(0, 1)``) whose rows
    are projected onto Range(M), so the points are distinct. T_S^T phi_0(X_S)^+
    = Y D = W holds exactly provided every row of D, hence of W, lies in
    Range(M): then X_S (M^T) = Phi_S. That **range condition**
    Range(W^T) ⊆ Range(M) is necessary for any distilled set of any size
    (the rows of a refitted W_S always lie in the span of the features), and
    it holds whenever W is a KRR solution fitted on features of this same
    map. It is checked as ||(I - M M^+) W^T||_F / ||W^T||_F <= ``tol``.

    Parameters
    ----------
    teacher : KRR
        Fitted, with a :class:`RandomLinear` feature map.
    ipc : int
        Points per class, m = k * ipc.
    noise_scale : float
        Scale of Z for ipc > 1.
    seed : int
        Seeds Z.
    tol : float
        Tolerance of the range condition.
    dataset : str, optional
        Recorded in the provenance.

    Returns
    -------
    DistilledSet
        One-hot targets, reg = 0, provenance with ``method="deep-linear"``,
        ``range_residual`` and ``recovery_error`` (||W_S - W|| / ||W|| of the
        KRR refitted on the points).

    Raises
    ------
    ValueError
        If the teacher is unfitted, its map is not a RandomLinear, or the
        range condition fails.
    """
    from ..distill import RECOVERY_TOLERANCE, class_interleaved_labels, features_from_d
    from ..distilled_set import DistilledSet
    from ..krr import KRR

    start = time.perf_counter()
    if not isinstance(teacher, KRR):
        raise TypeError(f"teacher must be a distillmem KRR, got {type(teacher).__name__}")
    if not hasattr(teacher, "weights_"):
        raise ValueError("teacher must be a fitted KRR: call teacher.fit(x, y) first")
    fmap = teacher.feature_map_
    if not isinstance(fmap, RandomLinear):
        raise ValueError(f"distill_deep_linear needs a teacher on a RandomLinear map, got {fmap!r}")
    if not (_is_int(ipc) and ipc >= 1):
        raise ValueError(f"ipc must be an integer >= 1, got {ipc!r}")
    if not noise_scale > 0:
        raise ValueError(f"noise_scale must be > 0, got {noise_scale!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")

    weights = teacher.weights_.to(torch.float64).cpu()
    k = weights.shape[0]
    residual = fmap.range_residual(weights)
    if not residual <= tol:
        raise ValueError(
            "range condition Range(W^T) ⊆ Range(M) fails: ||(I - M M^+) W^T||_F / ||W^T||_F = "
            f"{residual:.3g} > tol={tol:g}. No distilled set of any size gives back W through this "
            f"linear map (rank {fmap.rank} < p={fmap.widths[-1]}); was W fitted on features of this same map?"
        )
    m_mat = fmap.composed.cpu()
    m_pinv = pinv(m_mat)  # (d, p)
    ipc = int(ipc)
    labels = class_interleaved_labels(k, ipc)
    targets = torch.nn.functional.one_hot(labels, k).to(torch.float64)
    y_pinv = pinv(targets.T)  # (m, k)
    d_mat = y_pinv @ weights
    if ipc > 1:
        gen = torch.Generator().manual_seed(int(seed))
        scale = noise_scale * float(d_mat.std())
        free = scale * torch.randn(d_mat.shape, generator=gen, dtype=torch.float64)
        free = (free @ m_pinv.T) @ m_mat.T  # rows projected onto Range(M): Z M^{+T} M^T = Z (M M^+)^T
        d_mat = d_mat + free - y_pinv @ (targets.T @ free)
    features, _ = features_from_d(d_mat, 0.0, "plus")
    points = features @ m_pinv.T

    student = KRR(fmap, reg=0.0, n_classes=k, solver="svd").fit(points, targets)
    error = float(torch.linalg.norm(student.weights_ - weights) / torch.linalg.norm(weights))
    if not error <= RECOVERY_TOLERANCE:
        warnings.warn(
            f"the distilled model differs from the original: relative weight error {error:.3g} > {RECOVERY_TOLERANCE:g}",
            stacklevel=2,
        )
    from ..distill import _version

    return DistilledSet(
        x=points,
        y=targets,
        labels=labels,
        feature_map_spec=fmap.spec(),
        reg=0.0,
        provenance={
            "method": "deep-linear",
            "dataset": dataset,
            "n": teacher.n_samples_,
            "ipc": ipc,
            "seed": int(seed),
            "teacher_reg": teacher.reg_,
            "reg_s": 0.0,
            "map_rank": fmap.rank,
            "range_residual": residual,
            "recovery_error": error,
            "seconds": time.perf_counter() - start,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "distillmem_version": _version(),
        },
    )


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True
