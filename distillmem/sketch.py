"""Gram sketches: exact cross moments plus a frequent-directions sketch of the Gram.

KRR depends on the data only through G = Phi^T Phi (p, p) and R = Phi^T T
(p, k). R is small (k columns); G is what costs. A ``GramSketch`` keeps R
exactly (float64) and replaces G by r sketch rows B (r, p) built by frequent
directions (Liberty 2013; Ghashami et al. 2016): stream the feature rows in
chunks, and whenever [B; chunk] has more than r rows, take its SVD, subtract
delta = sigma_{r+1}^2 from every sigma_i^2 and keep the top r rows. The sum
Delta of those deltas bounds the error in the Loewner order:

    0 <= G - B^T B <= Delta I.

Adding (Delta / 2) I back (``correction="shrinkage"``) puts the estimate in
the middle of that interval; without it, the directions the sketch dropped
carry no energy and the head overfits them. The sketch also keeps diag(G)
exactly (p numbers), so ``correction="diagonal"`` adds the exact diagonal of
the dropped part, diag(G - B^T B): closer to G, but a weaker ridge where
Delta is large, which makes it the better preconditioner for iterative
refinement and the weaker one-shot head at small r. Sketches of disjoint
data merge by stacking their rows and re-shrinking; their cross moments,
diagonals and deltas add.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._stats import checked_features, iter_array_chunks, iter_batches
from ._validation import as_samples, as_targets, check_data_args, check_int, check_real, resolve_device
from .features import FeatureMap
from .krr import KRR

CORRECTIONS = ("shrinkage", "diagonal")


class GramSketch:
    """Exact R = Phi^T T and a rank-r frequent-directions sketch of G = Phi^T Phi, mergeable.

    Parameters
    ----------
    feature_map : FeatureMap
        phi, fixed for the life of the sketch.
    n_classes : int
        k, the number of target columns.
    rank : int, optional
        r >= 1, the number of sketch rows; None keeps G exactly (B has at
        most p rows, Delta stays 0).
    chunk_size : int
        Rows per chunk: features are computed and folded into the sketch one
        chunk at a time (memory O((r + chunk) * p)).
    device : str or torch.device, optional
        Where features and factorisations run; the state is kept on the CPU.

    Attributes
    ----------
    sketch_ : torch.Tensor of shape (r', p), float64
        B with r' <= r orthogonal rows (norms descending).
    cross_ : torch.Tensor of shape (p, k), float64
        R, exact.
    shrinkage_ : float
        Delta, the total frequent-directions shrinkage: 0 <= G - B^T B <= Delta I.
    diagonal_ : torch.Tensor of shape (p,), float64
        diag(G), exact.
    n_seen_ : int
        Samples absorbed.
    n_features_in_ : int
        d, the input width.

    Examples
    --------
    >>> import torch
    >>> from distillmem import KRR
    >>> from distillmem.features import Identity
    >>> from distillmem.sketch import GramSketch
    >>> x = torch.randn(300, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> y = torch.arange(300) % 3
    >>> exact = GramSketch(Identity(), n_classes=3).update(x, y).fit_krr(reg=0.1)
    >>> bool(torch.allclose(exact.weights_, KRR(Identity(), reg=0.1).fit(x, y).weights_, atol=1e-12))
    True
    >>> GramSketch(Identity(), n_classes=3, rank=5).update(x, y).sketch_.shape
    torch.Size([5, 20])
    """

    def __init__(
        self,
        feature_map: FeatureMap,
        n_classes: int,
        *,
        rank: int | None = None,
        chunk_size: int = 8192,
        device: str | torch.device | None = None,
    ) -> None:
        self.feature_map = feature_map
        self.n_classes = n_classes
        self.rank = rank
        self.chunk_size = chunk_size
        self.device = device

    def __repr__(self) -> str:
        return f"GramSketch({self.feature_map!r}, n_classes={self.n_classes}, rank={self.rank})"

    # -- absorbing data -------------------------------------------------------
    def update(self, x: Any, y: Any = None) -> "GramSketch":
        """Absorb x (n, d) or (n, C, H, W) with y (n,) labels or (n, k) targets; returns self.

        ``x`` may also be an iterable of (x, y) batches (then ``y=None``).
        """
        self._check_params()
        device = resolve_device(self.device)
        fmap = self.feature_map.to(device)
        if check_data_args(x, y):
            chunks = iter_batches(x, self.n_classes, device)
        else:
            xs = as_samples(x)
            targets, _ = as_targets(y, xs.shape[0], self.n_classes)
            chunks = iter_array_chunks(xs, targets, self.chunk_size, device)
        rows = 0
        for xc, tc in chunks:
            width = getattr(self, "n_features_in_", None)
            if width is not None and xc.shape[1] != width:
                raise ValueError(f"x has {xc.shape[1]} features, the sketch holds inputs of width {width}")
            for start in range(0, xc.shape[0], self.chunk_size):
                part = xc[start : start + self.chunk_size].to(torch.float64)
                f = checked_features(fmap, part, first_row=rows).to(torch.float64)
                self._absorb(f, tc[start : start + self.chunk_size].to(torch.float64), device)
                rows += f.shape[0]
            self.n_features_in_ = xc.shape[1]
        if rows == 0:
            raise ValueError("the data is empty: no batch was given")
        self.n_seen_ = getattr(self, "n_seen_", 0) + rows
        return self

    @classmethod
    def from_arrays(
        cls,
        feature_map: FeatureMap,
        sketch: Any,
        cross: Any,
        shrinkage: float,
        diagonal: Any,
        *,
        n_seen: int,
        n_features_in: int,
        **params: Any,
    ) -> "GramSketch":
        """Rebuild a sketch sent as arrays: B (r', p), R (p, k), Delta >= 0, diag(G) (p,) (e.g. a federated upload).

        ``params`` are the constructor's keywords other than ``n_classes``
        (taken from R); a ``rank`` below r' re-shrinks the rows.
        """
        if not isinstance(feature_map, FeatureMap):
            raise TypeError(f"feature_map must be a distillmem FeatureMap, got {type(feature_map).__name__}")
        n_features_in = check_int(n_features_in, "n_features_in", minimum=1)
        p = feature_map.out_features(n_features_in)
        b = torch.as_tensor(np.asarray(sketch), dtype=torch.float64)
        r = torch.as_tensor(np.asarray(cross), dtype=torch.float64)
        diag = torch.as_tensor(np.asarray(diagonal), dtype=torch.float64)
        if b.ndim != 2 or b.shape[1] != p:
            raise ValueError(f"sketch must have shape (r, {p}) for {feature_map!r}, found {tuple(b.shape)}")
        if r.ndim != 2 or r.shape[0] != p:
            raise ValueError(f"cross must have shape ({p}, k), found {tuple(r.shape)}")
        if diag.shape != (p,):
            raise ValueError(f"diagonal must have shape ({p},), found {tuple(diag.shape)}")
        if not all(bool(torch.isfinite(t).all()) for t in (b, r, diag)):
            raise ValueError("sketch, cross and diagonal must be finite (no NaN or Inf)")
        # G - B^T B is positive semi-definite, so its diagonal is too.
        excess = float((b.square().sum(dim=0) - diag).max())
        if excess > 1e-6 * max(float(diag.abs().max()), 1.0):
            raise ValueError(f"diagonal is below the diagonal of the sketch's B^T B by up to {excess:.6g}: not a sketch of one Gram")
        shrinkage = check_real(shrinkage, "shrinkage", minimum=0.0)
        n_seen = check_int(n_seen, "n_seen", minimum=0)
        out = cls(feature_map, r.shape[1], **params)
        out._check_params()
        out.cross_ = torch.zeros(p, r.shape[1], dtype=torch.float64)
        out.sketch_ = torch.zeros(0, p, dtype=torch.float64)
        out.shrinkage_ = float(shrinkage)
        out._absorb(b, None, resolve_device(out.device))
        out.cross_ += r
        out.diagonal_ = diag
        out.n_seen_ = n_seen
        out.n_features_in_ = n_features_in
        return out

    # -- combining --------------------------------------------------------------
    def merge(self, other: "GramSketch") -> "GramSketch":
        """A new sketch of the union of both sketches' data, with this sketch's rank (neither input changes).

        Rows are stacked and shrunk once more; R and the deltas add, so the
        bound 0 <= G - B^T B <= Delta I holds for the union.
        """
        if not isinstance(other, GramSketch):
            raise TypeError(f"can only merge a GramSketch, got {type(other).__name__}")
        self._check_params()
        for sk in (self, other):
            sk._check_fitted()
        if self.feature_map.spec() != other.feature_map.spec():
            raise ValueError(f"cannot merge sketches of different feature maps: {self.feature_map.spec()} != {other.feature_map.spec()}")
        if self.cross_.shape != other.cross_.shape or self.n_features_in_ != other.n_features_in_:
            raise ValueError(
                f"cannot merge sketches of different shapes: R {tuple(self.cross_.shape)} (d={self.n_features_in_}) "
                f"and {tuple(other.cross_.shape)} (d={other.n_features_in_})"
            )
        merged = type(self)(self.feature_map, self.n_classes, rank=self.rank, chunk_size=self.chunk_size, device=self.device)
        merged.sketch_ = self.sketch_.clone()
        merged.cross_ = self.cross_ + other.cross_
        merged.shrinkage_ = self.shrinkage_ + other.shrinkage_
        merged.diagonal_ = self.diagonal_ + other.diagonal_
        merged._absorb(other.sketch_, None, resolve_device(self.device))
        merged.n_seen_ = self.n_seen_ + other.n_seen_
        merged.n_features_in_ = self.n_features_in_
        return merged

    # -- using the sketch -------------------------------------------------------
    def gram(self, correction: str = "shrinkage") -> torch.Tensor:
        """The estimate of G, (p, p) float64: B^T B + (Delta / 2) I, or B^T B + diag(G - B^T B) (see the module)."""
        self._check_fitted()
        if correction not in CORRECTIONS:
            raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
        g = self.sketch_.T @ self.sketch_
        if correction == "shrinkage":
            g.diagonal().add_(self.shrinkage_ / 2)
        else:
            g.diagonal().copy_(torch.maximum(self.diagonal_, g.diagonal()))
        return g

    def fit_krr(self, reg: float, correction: str = "shrinkage") -> KRR:
        """The KRR head W^T = (gram(correction) + reg I)^-1 R; exact when Delta = 0."""
        self._check_fitted()
        reg = check_real(reg, "reg", minimum=0.0)
        g = self.gram(correction)
        g.diagonal().add_(reg)
        # lstsq keeps reg = 0 usable on a singular Gram (minimum-norm solution).
        weights_t = torch.linalg.lstsq(g, self.cross_, driver="gelsd").solution if reg == 0 else torch.linalg.solve(g, self.cross_)
        return KRR.from_weights(
            self.feature_map, weights_t.T, reg, n_features_in=self.n_features_in_, n_samples=self.n_seen_,
            chunk_size=self.chunk_size, device=self.device,
        )

    @property
    def nbytes(self) -> int:
        """Bytes of the state in float64: B, R, diag(G) and Delta."""
        self._check_fitted()
        return (self.sketch_.numel() + self.cross_.numel() + self.diagonal_.numel() + 1) * 8

    # -- internals --------------------------------------------------------------
    def _absorb(self, features: torch.Tensor, targets: torch.Tensor | None, device: torch.device) -> None:
        """Add rows (m, p) to R and diag(G) (data rows, with targets) and fold them into B, shrinking to the rank."""
        p = features.shape[1]
        if not hasattr(self, "sketch_"):
            self.sketch_ = torch.zeros(0, p, dtype=torch.float64)
            self.cross_ = torch.zeros(p, self.n_classes, dtype=torch.float64)
            self.diagonal_ = torch.zeros(p, dtype=torch.float64)
            self.shrinkage_ = 0.0
        features = features.to(device)
        if targets is not None:
            self.cross_ += (features.T @ targets.to(device)).cpu()
            self.diagonal_ += features.square().sum(dim=0).cpu()
        stacked = torch.cat([self.sketch_.to(device), features])
        if stacked.shape[0] > p:
            stacked = torch.linalg.qr(stacked, mode="r")[1]  # same Gram, at most p rows
        if stacked.shape[0] == 0:
            return
        _, sing, right_t = torch.linalg.svd(stacked, full_matrices=False)
        energy = sing.square()
        r = energy.shape[0] if self.rank is None else int(self.rank)
        if energy.shape[0] > r:
            delta = float(energy[r])
            energy = (energy[:r] - delta).clamp_min(0)
            right_t = right_t[:r]
            self.shrinkage_ += delta
        keep = energy > 0
        self.sketch_ = (energy[keep].sqrt()[:, None] * right_t[keep]).cpu()

    def _check_params(self) -> None:
        if not isinstance(self.feature_map, FeatureMap):
            raise TypeError(f"feature_map must be a distillmem FeatureMap, got {type(self.feature_map).__name__}")
        check_int(self.n_classes, "n_classes", minimum=1)
        if self.rank is not None:
            check_int(self.rank, "rank", minimum=1)
        check_int(self.chunk_size, "chunk_size", minimum=1)

    def _check_fitted(self) -> None:
        if not hasattr(self, "cross_"):
            raise RuntimeError("this GramSketch is empty: call update(x, y) first")
