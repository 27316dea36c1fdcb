"""Gram sketches: exact cross moments, a truncated eigendecomposition of the Gram, and a local-head correction.

KRR depends on the data only through G = Phi^T Phi (p, p) and R = Phi^T T
(p, k). R is small (k columns); G is what costs. A ``GramSketch`` keeps R and
diag(G) exactly (float64) and replaces G by r rows B (r, p) holding its top
eigenpairs (B^T B = U S U^T, B = S^(1/2) U^T). Each ``update`` call folds its
data in exactly (the call's Gram is accumulated chunk by chunk) and truncates
once: one eigendecomposition of B^T B + G_call, keep the top r, drop the rest
D_t. Every D_t is positive semidefinite with norm delta_t, the largest dropped
eigenvalue, so with Delta = sum_t delta_t

    0 <= G - B^T B <= Delta I.

Two estimates of G: "diagonal", B^T B plus the exact diagonal of what was
dropped, G_hat = B^T B + diag(G - B^T B), and "shrinkage", B^T B + (Delta / 2) I,
the middle of the interval above. With ``reg`` set, the sketch also keeps a
correction C = sum_t (D_t - diag D_t) W_t (p, k), W_t the head of the state
just before truncation t; since G - G_hat = sum_t (D_t - diag D_t), the head
(G_hat + lambda I)^-1 (R - C) reproduces most of what the truncation lost.
Without a correction the head uses "shrinkage", whose error stays within
+-Delta/2; "diagonal" alone leaves the dropped directions' off-diagonal
energy out (docs/math.md, section 11.7). Sketches of disjoint data merge: R, diag(G),
Delta and C add, and the stacked rows are truncated once more, the part that
drops handled as in an update.

The corrected head needs R and C only through R - C, and every update and
merge changes that difference additively; ``fold=True`` keeps just it
(``target_``, k rows) instead of R and C (2k rows).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._solvers import eigh
from ._stats import checked_features, iter_array_chunks, iter_batches
from ._validation import as_samples, as_targets, check_data_args, check_int, check_real, resolve_device
from .features import FeatureMap
from .krr import KRR

ESTIMATES = ("diagonal", "shrinkage")


class GramSketch:
    """Exact R = Phi^T T and diag(G), the top-r eigenpairs of G = Phi^T Phi, and a local-head correction; mergeable.

    Parameters
    ----------
    feature_map : FeatureMap
        phi, fixed for the life of the sketch.
    n_classes : int
        k, the number of target columns.
    rank : int, optional
        r >= 1, the number of sketch rows; None keeps G exactly (Delta stays 0).
    reg : float, optional
        lambda >= 0 of the heads W_t behind the correction C; None keeps no
        correction (``correction_`` is None).
    fold : bool
        With ``reg``: keep only the target R - C (``target_``), not R and C
        apart (``cross_`` and ``correction_`` are None). Same head, k rows
        less; R itself is then lost (a refinement that needs it cannot run).
    chunk_size : int
        Rows per chunk: features are computed and their Gram accumulated one
        chunk at a time (memory O(p^2 + chunk * p)).
    device : str or torch.device, optional
        Where features and factorisations run; the state is kept on the CPU.

    Attributes
    ----------
    sketch_ : torch.Tensor of shape (r', p), float64
        B = S^(1/2) U^T, r' <= r orthogonal rows, norms descending.
    cross_ : torch.Tensor of shape (p, k), float64, or None
        R, exact (None when folded).
    diagonal_ : torch.Tensor of shape (p,), float64
        diag(G), exact.
    shrinkage_ : float
        Delta, the sum of the largest dropped eigenvalues: 0 <= G - B^T B <= Delta I.
    correction_ : torch.Tensor of shape (p, k), float64, or None
        C = sum_t (D_t - diag D_t) W_t, with ``reg`` set and not folded.
    target_ : torch.Tensor of shape (p, k), float64
        R - C, the right-hand side of the head (R without a correction).
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
    >>> GramSketch(Identity(), n_classes=3, rank=5, reg=0.1).update(x, y).correction_.shape
    torch.Size([20, 3])
    """

    def __init__(
        self,
        feature_map: FeatureMap,
        n_classes: int,
        *,
        rank: int | None = None,
        reg: float | None = None,
        fold: bool = False,
        chunk_size: int = 8192,
        device: str | torch.device | None = None,
    ) -> None:
        self.feature_map = feature_map
        self.n_classes = n_classes
        self.rank = rank
        self.reg = reg
        self.fold = fold
        self.chunk_size = chunk_size
        self.device = device

    def __repr__(self) -> str:
        return f"GramSketch({self.feature_map!r}, n_classes={self.n_classes}, rank={self.rank}, reg={self.reg}, fold={self.fold})"

    # -- absorbing data -------------------------------------------------------
    def update(self, x: Any, y: Any = None) -> "GramSketch":
        """Absorb x (n, d) or (n, C, H, W) with y (n,) labels or (n, k) targets; returns self.

        ``x`` may also be an iterable of (x, y) batches (then ``y=None``).
        The whole call is folded in exactly, then truncated once to the rank.
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
        rows, gram, cross = 0, None, None
        for xc, tc in chunks:
            width = getattr(self, "n_features_in_", None)
            if width is not None and xc.shape[1] != width:
                raise ValueError(f"x has {xc.shape[1]} features, the sketch holds inputs of width {width}")
            for start in range(0, xc.shape[0], self.chunk_size):
                part = xc[start : start + self.chunk_size].to(torch.float64)
                f = checked_features(fmap, part, first_row=rows).to(torch.float64)
                t = tc[start : start + self.chunk_size].to(torch.float64)
                if gram is None:
                    gram = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64, device=device)
                    cross = torch.zeros(f.shape[1], self.n_classes, dtype=torch.float64, device=device)
                gram += f.T @ f
                cross += f.T @ t
                rows += f.shape[0]
            width = xc.shape[1]
        if rows == 0:
            raise ValueError("the data is empty: no batch was given")
        self._start(gram.shape[0])
        self._fold(gram, cross, torch.diagonal(gram), None, device)
        self.n_features_in_ = width
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
        correction: Any = None,
        **params: Any,
    ) -> "GramSketch":
        """Rebuild a sketch sent as arrays: B (r', p), R (p, k), Delta >= 0, diag(G) (p,) and C (p, k) (e.g. an upload).

        ``params`` are the constructor's keywords other than ``n_classes``
        (taken from R); ``correction`` needs ``reg`` among them, and ``reg``
        without a correction starts C at 0. With ``fold=True`` the sketch
        keeps cross - correction, so ``cross`` may also be a folded sketch's
        target R - C given alone. A ``rank`` below r' truncates the rows once
        more.
        """
        if not isinstance(feature_map, FeatureMap):
            raise TypeError(f"feature_map must be a distillmem FeatureMap, got {type(feature_map).__name__}")
        n_features_in = check_int(n_features_in, "n_features_in", minimum=1)
        p = feature_map.out_features(n_features_in)
        named = {"sketch": sketch, "cross": cross, "diagonal": diagonal, **({} if correction is None else {"correction": correction})}
        b, r, diag, *corr = (torch.as_tensor(np.asarray(a), dtype=torch.float64) for a in named.values())
        if b.ndim != 2 or b.shape[1] != p:
            raise ValueError(f"sketch must have shape (r, {p}) for {feature_map!r}, found {tuple(b.shape)}")
        if r.ndim != 2 or r.shape[0] != p:
            raise ValueError(f"cross must have shape ({p}, k), found {tuple(r.shape)}")
        if diag.shape != (p,):
            raise ValueError(f"diagonal must have shape ({p},), found {tuple(diag.shape)}")
        if corr and corr[0].shape != r.shape:
            raise ValueError(f"correction must have the shape of cross, {tuple(r.shape)}, found {tuple(corr[0].shape)}")
        if not all(bool(torch.isfinite(t).all()) for t in (b, r, diag, *corr)):
            raise ValueError(f"{', '.join(named)} must be finite (no NaN or Inf)")
        # G - B^T B is positive semi-definite, so its diagonal is too.
        excess = float((b.square().sum(dim=0) - diag).max())
        if excess > 1e-6 * max(float(diag.abs().max()), 1.0):
            raise ValueError(f"diagonal is below the diagonal of the sketch's B^T B by up to {excess:.6g}: not a sketch of one Gram")
        shrinkage = check_real(shrinkage, "shrinkage", minimum=0.0)
        n_seen = check_int(n_seen, "n_seen", minimum=0)
        out = cls(feature_map, r.shape[1], **params)
        out._check_params()
        if corr and out.reg is None:
            raise ValueError("a correction needs the reg it was computed at: pass reg=")
        out._start(p)
        out._fold(b.T @ b, r, diag, corr[0] if corr else None, resolve_device(out.device))
        out.shrinkage_ += shrinkage
        out.n_seen_ = n_seen
        out.n_features_in_ = n_features_in
        return out

    # -- combining --------------------------------------------------------------
    def merge(self, other: "GramSketch") -> "GramSketch":
        """A new sketch of the union of both sketches' data, with this sketch's rank (neither input changes).

        R, diag(G), Delta and C add; the stacked rows are truncated once more.
        """
        if not isinstance(other, GramSketch):
            raise TypeError(f"can only merge a GramSketch, got {type(other).__name__}")
        self._check_params()
        for sk in (self, other):
            sk._check_fitted()
        if self.feature_map.spec() != other.feature_map.spec():
            raise ValueError(f"cannot merge sketches of different feature maps: {self.feature_map.spec()} != {other.feature_map.spec()}")
        if self.target_.shape != other.target_.shape or self.n_features_in_ != other.n_features_in_:
            raise ValueError(
                f"cannot merge sketches of different shapes: R {tuple(self.target_.shape)} (d={self.n_features_in_}) "
                f"and {tuple(other.target_.shape)} (d={other.n_features_in_})"
            )
        if self.reg != other.reg:
            raise ValueError(f"cannot merge sketches corrected at different reg: {self.reg} and {other.reg}")
        if other.fold and not self.fold:
            raise ValueError("cannot merge a folded sketch (R - C only) into one that keeps R and C apart")
        merged = type(self)(self.feature_map, self.n_classes, rank=self.rank, reg=self.reg, fold=self.fold,
                            chunk_size=self.chunk_size, device=self.device)
        merged.sketch_, merged.diagonal_ = self.sketch_, self.diagonal_
        merged.cross_, merged.correction_ = self.cross_, self.correction_
        if self.fold:
            merged._target = self._target
        merged.shrinkage_ = self.shrinkage_ + other.shrinkage_
        rhs, correction = (other.target_, None) if other.fold else (other.cross_, other.correction_)
        merged._fold(other.sketch_.T @ other.sketch_, rhs, other.diagonal_, correction, resolve_device(self.device))
        merged.n_seen_ = self.n_seen_ + other.n_seen_
        merged.n_features_in_ = self.n_features_in_
        return merged

    # -- using the sketch -------------------------------------------------------
    def gram(self, estimate: str = "diagonal") -> torch.Tensor:
        """The estimate of G, (p, p) float64: B^T B + diag(G - B^T B) ("diagonal") or B^T B + (Delta / 2) I ("shrinkage")."""
        self._check_fitted()
        if estimate not in ESTIMATES:
            raise ValueError(f"estimate must be one of {ESTIMATES}, got {estimate!r}")
        low = self.sketch_.T @ self.sketch_
        if estimate == "diagonal":
            return _estimate(low, self.diagonal_)
        low.diagonal().add_(self.shrinkage_ / 2)
        return low

    @property
    def target_(self) -> torch.Tensor:
        """R - C (p, k), the right-hand side of the head (R without a correction); the whole of it when folded."""
        if self.fold:
            return self._target
        return self.cross_ if self.correction_ is None else self.cross_ - self.correction_

    @property
    def head_estimate(self) -> str:
        """The estimate ``fit_krr`` uses: "diagonal" with a correction (``reg`` set), "shrinkage" without."""
        return "shrinkage" if self.reg is None else "diagonal"

    def fit_krr(self, reg: float) -> KRR:
        """The KRR head W^T = (gram(head_estimate) + reg I)^-1 (R - C) (C = 0 without ``reg``); exact when Delta = 0."""
        self._check_fitted()
        reg = check_real(reg, "reg", minimum=0.0)
        weights_t = _ridge(self.gram(self.head_estimate), self.target_, reg)
        return KRR.from_weights(
            self.feature_map, weights_t.T, reg, n_features_in=self.n_features_in_, n_samples=self.n_seen_,
            chunk_size=self.chunk_size, device=self.device,
        )

    @property
    def nbytes(self) -> int:
        """Bytes of the state in float64: B, diag(G), Delta and R and C (or, folded, R - C alone)."""
        self._check_fitted()
        kept = [self._target] if self.fold else [t for t in (self.cross_, self.correction_) if t is not None]
        return (self.sketch_.numel() + self.diagonal_.numel() + sum(t.numel() for t in kept) + 1) * 8

    # -- internals --------------------------------------------------------------
    def _start(self, p: int) -> None:
        if not hasattr(self, "sketch_"):
            zeros = torch.zeros(p, self.n_classes, dtype=torch.float64)
            self.sketch_ = torch.zeros(0, p, dtype=torch.float64)
            self.diagonal_ = torch.zeros(p, dtype=torch.float64)
            self.shrinkage_ = 0.0
            self.cross_ = None if self.fold else zeros
            self.correction_ = None if self.fold or self.reg is None else zeros
            if self.fold:
                self._target = zeros

    def _fold(self, gram: torch.Tensor, cross: torch.Tensor, diagonal: torch.Tensor, correction: torch.Tensor | None,
              device: torch.device) -> None:
        """Add a Gram (p, p), its R (p, k), exact diagonal (p,) and correction to the state; truncate once to the rank."""
        state = self.sketch_.to(device).T @ self.sketch_.to(device) + gram.to(device)
        self.diagonal_ = self.diagonal_ + diagonal.cpu()
        if self.fold:
            self._target = self._target + cross.cpu() - (0 if correction is None else correction.cpu())
        else:
            self.cross_ = self.cross_ + cross.cpu()
            if correction is not None:
                self.correction_ = self.correction_ + correction.cpu()
        eig, vec = eigh(state)
        eig, vec = eig.flip(0), vec.flip(1)
        # Eigenvalues within rounding of 0 are not data: dropping them changes neither Delta nor C.
        tol = state.shape[0] * torch.finfo(torch.float64).eps * max(float(eig[0]), 0.0)
        n_kept = int((eig > tol).sum())
        r = n_kept if self.rank is None else min(int(self.rank), n_kept)
        if r < n_kept:
            self.shrinkage_ += float(eig[r])
            if self.reg is not None:
                # The head of the state before truncation, then the dropped part D (less its diagonal) times it.
                head = _ridge(_estimate(state, self.diagonal_.to(device)), self.target_.to(device), float(self.reg))
                dropped = (vec[:, r:n_kept] * eig[r:n_kept]) @ vec[:, r:n_kept].T
                added = ((dropped - torch.diag(torch.diagonal(dropped))) @ head).cpu()
                if self.fold:
                    self._target = self._target - added
                else:
                    self.correction_ = self.correction_ + added
        self.sketch_ = (eig[:r].sqrt()[:, None] * vec[:, :r].T).cpu()

    def _check_params(self) -> None:
        if not isinstance(self.feature_map, FeatureMap):
            raise TypeError(f"feature_map must be a distillmem FeatureMap, got {type(self.feature_map).__name__}")
        check_int(self.n_classes, "n_classes", minimum=1)
        if self.rank is not None:
            check_int(self.rank, "rank", minimum=1)
        if self.reg is not None:
            check_real(self.reg, "reg", minimum=0.0)
        if not isinstance(self.fold, bool):
            raise TypeError(f"fold must be True or False, got {self.fold!r}")
        if self.fold and self.reg is None:
            raise ValueError("fold=True keeps R - C, which needs a correction: pass reg=")
        check_int(self.chunk_size, "chunk_size", minimum=1)

    def _check_fitted(self) -> None:
        if not hasattr(self, "diagonal_"):
            raise RuntimeError("this GramSketch is empty: call update(x, y) first")


def _estimate(low: torch.Tensor, diagonal: torch.Tensor) -> torch.Tensor:
    """low (p, p) with its diagonal raised to the exact one (p,): the dropped part's diagonal added back."""
    g = low.clone()
    g.diagonal().copy_(torch.maximum(diagonal, g.diagonal()))
    return g


def _ridge(gram: torch.Tensor, rhs: torch.Tensor, reg: float) -> torch.Tensor:
    """(gram + reg I)^-1 rhs (p, k); lstsq keeps reg = 0 usable on a singular Gram (minimum-norm solution)."""
    g = gram.clone()
    g.diagonal().add_(reg)
    return torch.linalg.lstsq(g, rhs, driver="gelsd").solution if reg == 0 else torch.linalg.solve(g, rhs)
