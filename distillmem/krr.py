"""Kernel ridge regression on an explicit feature map, fitted in float64."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ._solvers import Spectral, pinv, solve_dual, solve_primal
from ._stats import Moments, accumulate_moments, checked_features, iter_array_chunks, iter_batches, n_chunks
from ._validation import as_samples, as_targets, check_data_args, check_int, check_real, resolve_device, to_tensor
from .data import train_val_split
from .features import FeatureMap, Identity

#: The paper's lambda grids: 10^-6 .. 10^5.5 for nonlinear maps and, since
#: X X^T is singular for linear features (constant border pixels), 10^-3 .. 10^5.5.
PAPER_REG_GRID: tuple[float, ...] = tuple(10.0 ** (e / 2) for e in range(-12, 12))
LINEAR_REG_GRID: tuple[float, ...] = tuple(10.0 ** (e / 2) for e in range(-6, 12))


SOLVERS = ("auto", "primal", "svd", "dual")
#: In-memory problems with at most this many feature entries (128 MiB in float64)
#: are solved from the SVD of the features rather than from their Gram.
SVD_MAX_ENTRIES = 2**24


def default_reg_grid(feature_map: FeatureMap) -> tuple[float, ...]:
    return LINEAR_REG_GRID if isinstance(feature_map, Identity) else PAPER_REG_GRID


class KRR:
    """Kernel ridge regression f(x) = W phi(x), W of shape (k, p).

    Minimises ||Phi W^T - T||^2 + reg ||W||^2 over samples (rows). Solvers:
    ``"primal"`` accumulates the p x p Gram in chunks (memory O(p^2 + chunk),
    whatever n); ``"svd"`` takes the thin SVD of the (n, p) features, which
    forms no Gram and so stays exact at reg = 0 on ill-conditioned features
    (distilled sets are such data); at reg = 0 it takes their pseudo-inverse,
    through QR when they have full rank (as accurate, three times faster).
    ``"auto"`` uses the primal for streamed data and for n >= p with
    n * p > 2^24 entries, and the SVD otherwise. ``"dual"`` (asked for, never
    chosen by "auto") solves the n x n system W^T = Phi^T (Phi Phi^T + reg I)^-1 T
    by Cholesky, for a fixed reg > 0: on n << p samples it is far cheaper than
    the SVD (1,000 x 3,072: 9x on one thread, experiments/solver_timing.py) and
    as accurate while reg is not tiny against ||Phi||^2.
    Features are computed in the dtype of the inputs (float32 or float64; 8-
    and 16-bit integers become float32, exactly, and other dtypes float64);
    they are widened to float64 before any product, so Gram matrices, cross
    moments and solves are always float64. Features that overflow (finite
    float32 inputs can) raise a ValueError rather than reaching a solve.

    Targets: integer labels (n,) of k >= 2 classes (one-hot encoded), or a
    float matrix (n, k). A single column (n, 1) is one regression target:
    ``weights_`` and ``decision_function`` are then meaningful, but ``predict``,
    ``score`` and ``reg="auto"`` (accuracy of an argmax) refuse it, and an
    integer (n, 1) column is refused as labels of the wrong shape.

    Parameters
    ----------
    feature_map : FeatureMap, optional
        phi; default ``Identity()`` (linear ridge regression).
    reg : float or "auto"
        lambda >= 0. ``"auto"`` picks it by validation accuracy over
        ``reg_grid`` (first maximum in ascending order) from one
        eigendecomposition, then refits on all the data given to ``fit``.
    reg_grid : sequence of float, optional
        Candidates for ``"auto"``, finite and >= 0; default the paper's grid for the map.
    val_fraction : float
        Held-out share for ``"auto"`` when ``fit`` gets no ``eval_set``.
    seed : int
        Seed of the held-out split.
    refit : bool
        For ``"auto"`` with the internal split: refit on all the data at the
        chosen lambda (True), or keep the model fitted on the training part,
        as in the paper's protocol (False).
    solver : {"auto", "primal", "svd", "dual"}
    n_classes : int, optional
        k for integer labels (>= 2), or the number of target columns; default
        max(y) + 1 with every class present.
    chunk_size : int
        Rows per chunk when computing features.
    device : str or torch.device, optional
        Where features and solves run (the feature map is moved there);
        ``weights_`` are kept on the CPU.
    progress : bool
        Show a progress bar over chunks.

    Attributes
    ----------
    feature_map_ : FeatureMap
        The map used (``Identity()`` when none was given).
    weights_ : torch.Tensor of shape (k, p), float64
    reg_ : float
        The lambda of ``weights_``.
    n_classes_ : int
    n_features_in_ : int
        d.
    n_samples_ : int
        Samples the final weights were fitted on.
    solver_ : str
        ``"primal"``, ``"svd"`` or ``"dual"`` (``"given"`` for ``from_weights``).
    val_accuracy_ : dict[float, float]
        Validation accuracy per lambda (only for ``reg="auto"``).
    """

    def __init__(
        self,
        feature_map: FeatureMap | None = None,
        reg: float | str = "auto",
        *,
        reg_grid: Sequence[float] | None = None,
        val_fraction: float = 0.05,
        seed: int = 0,
        refit: bool = True,
        solver: str = "auto",
        n_classes: int | None = None,
        chunk_size: int = 8192,
        device: str | torch.device | None = None,
        progress: bool = False,
    ) -> None:
        self.feature_map = feature_map
        self.reg = reg
        self.reg_grid = reg_grid
        self.val_fraction = val_fraction
        self.seed = seed
        self.refit = refit
        self.solver = solver
        self.n_classes = n_classes
        self.chunk_size = chunk_size
        self.device = device
        self.progress = progress

    # -- fitting ------------------------------------------------------------
    def fit(self, x: Any, y: Any = None, *, eval_set: tuple[Any, Any] | None = None) -> "KRR":
        """Fit on x (n, d) or (n, C, H, W) with y (n,) labels or (n, k) targets.

        ``x`` may be a tensor (autograd graphs are not followed), a numpy
        array (memory-mapped too) or, with ``y=None``, an iterable of (x, y)
        batches. ``eval_set=(x_val, y_val)`` selects lambda for ``reg="auto"``
        on that set and fits on ``x`` only.
        """
        self._check_params()
        streamed = check_data_args(x, y)
        device = resolve_device(self.device)
        chosen = Identity() if self.feature_map is None else self.feature_map
        fmap = self.feature_map_ = chosen.on_device(device)

        val = None
        if eval_set is not None:
            val = self._eval_data(eval_set, device)
            self._check_auto_targets(val[1].shape[1], "y_val")
        elif self.reg == "auto" and streamed:
            raise ValueError('reg="auto" on an iterable of batches needs eval_set=(x_val, y_val)')

        if streamed:
            if self.solver in ("svd", "dual"):
                raise ValueError(f'solver="{self.solver}" needs the data as an array, not an iterable of batches')
            moments = accumulate_moments(fmap, iter_batches(x, self.n_classes, device), progress=self.progress)
            if val is not None and val[0].shape[1] != moments.in_features:
                raise ValueError(f"eval_set has {val[0].shape[1]} features, the batches have {moments.in_features}")
            self.n_features_in_ = moments.in_features
            self._finish_primal(moments, val)
            return self

        xs = as_samples(x)
        targets, k = as_targets(y, xs.shape[0], self.n_classes)
        self._check_auto_targets(k, "y")
        self.n_features_in_ = xs.shape[1]
        p = fmap.out_features(xs.shape[1])
        if val is not None and val[0].shape[1] != xs.shape[1]:
            raise ValueError(f"eval_set has {val[0].shape[1]} features, x has {xs.shape[1]}")

        split = None
        if self.reg == "auto" and val is None:
            train_idx, val_idx = train_val_split(xs.shape[0], self.val_fraction, self.seed)
            split = torch.zeros(xs.shape[0], dtype=torch.bool)
            split[val_idx] = True

        small = xs.shape[0] < p or xs.shape[0] * p <= SVD_MAX_ENTRIES
        if self.solver == "dual":
            self._fit_dual(fmap, xs, targets, device)
        elif self.solver == "svd" or (self.solver == "auto" and small):
            self._fit_svd(fmap, xs, targets, split, val, device)
        else:
            self._fit_primal(fmap, xs, targets, split, val, device)
        return self

    def _fit_primal(self, fmap, xs, targets, split, val, device) -> None:
        """Stream chunks into train moments; rows in ``split`` become validation data."""
        held_x, held_t = [], []

        def train_chunks():
            for start, (xc, tc) in zip(
                range(0, xs.shape[0], self.chunk_size), iter_array_chunks(xs, targets, self.chunk_size, device)
            ):
                if split is None:
                    yield xc, tc
                    continue
                mask = split[start : start + xc.shape[0]].to(device)
                held_x.append(xc[mask])
                held_t.append(tc[mask])
                yield xc[~mask], tc[~mask]

        total = n_chunks(xs.shape[0], self.chunk_size)
        moments = accumulate_moments(fmap, train_chunks(), progress=self.progress, total=total)
        if split is not None:
            val = (torch.cat(held_x), torch.cat(held_t))
            held_x.clear()
            held_t.clear()
        self._finish_primal(
            moments, val, refit_with_val=split is not None and self.refit, val_name="x_val" if split is None else "x"
        )

    def _finish_primal(self, moments: Moments, val, *, refit_with_val: bool = False, val_name: str = "x_val") -> None:
        if self.reg != "auto":
            reg = float(self.reg)
            self._store(solve_primal(moments.gram, moments.cross, reg), reg, moments.n, moments.cross.shape[1], "primal")
            return
        spectral = Spectral.primal(moments.gram, moments.cross)
        val_features = checked_features(self.feature_map_, val[0], name=val_name)
        reg = self._select_reg(spectral, val_features, val[1])
        if refit_with_val:
            # The held-out features exist already: their moments under the identity complete G and R.
            moments = moments + accumulate_moments(Identity(), [(val_features, val[1])])
            weights_t = solve_primal(moments.gram, moments.cross, reg)
        else:
            weights_t = spectral.weights_t(reg)
        self._store(weights_t, reg, moments.n, moments.cross.shape[1], "primal")

    def _fit_svd(self, fmap, xs, targets, split, val, device) -> None:
        features = checked_features(fmap, to_tensor(xs, device)).to(torch.float64)
        targets = targets.to(device)
        if self.reg != "auto":
            reg = float(self.reg)
            # At reg 0 the head is pinv(Phi) T, which skips the SVD when Phi has full rank (a distilled set's usually has).
            weights_t = pinv(features) @ targets if reg == 0 else Spectral.svd(features, targets).weights_t(reg)
            self._store(weights_t, reg, features.shape[0], targets.shape[1], "svd")
            return
        if split is None:
            spectral = Spectral.svd(features, targets)
            val_features, val_targets = checked_features(fmap, val[0], name="x_val"), val[1]
        else:
            split = split.to(device)
            val_features, val_targets = features[split], targets[split]
            spectral = Spectral.svd(features[~split], targets[~split])
        reg = self._select_reg(spectral, val_features, val_targets)
        n = features.shape[0]
        if split is not None and self.refit:
            spectral = Spectral.svd(features, targets)
        elif split is not None:
            n -= int(split.sum())
        self._store(spectral.weights_t(reg), reg, n, targets.shape[1], "svd")

    def _fit_dual(self, fmap, xs, targets, device) -> None:
        features = checked_features(fmap, to_tensor(xs, device)).to(torch.float64)
        self._store(solve_dual(features, targets.to(device), float(self.reg)), float(self.reg), features.shape[0],
                    targets.shape[1], "dual")

    def _select_reg(self, spectral: Spectral, val_features: torch.Tensor, val_targets: torch.Tensor) -> float:
        grid = self._reg_grid_values()
        truth = val_targets.argmax(dim=1)
        weights_t = spectral.weights_t_grid(grid)
        correct = torch.zeros(len(grid), dtype=torch.int64)
        # In chunks of rows: the scores (n_val, len(grid), k) of a large held-out set need not coexist.
        for start in range(0, truth.shape[0], self.chunk_size):
            chunk = val_features[start : start + self.chunk_size].to(torch.float64)
            scores = (chunk @ weights_t).reshape(chunk.shape[0], len(grid), -1)
            correct += (scores.argmax(dim=2) == truth[start : start + self.chunk_size, None]).sum(dim=0).cpu()
        self.val_accuracy_ = {reg: int(c) / truth.shape[0] for reg, c in zip(grid, correct)}
        # max() keeps the first maximum, in ascending grid order as in the paper.
        return max(sorted(self.val_accuracy_), key=self.val_accuracy_.__getitem__)

    def _store(self, weights_t: torch.Tensor, reg: float, n: int, k: int, solver: str) -> None:
        self.weights_ = weights_t.T.contiguous().cpu()
        self.reg_ = reg
        self.n_samples_ = n
        self.n_classes_ = k
        self.solver_ = solver

    @classmethod
    def from_weights(
        cls, feature_map: FeatureMap, weights: torch.Tensor, reg: float, *, n_features_in: int, n_samples: int, **params: Any
    ) -> "KRR":
        """A fitted KRR from weights (k, p) solved elsewhere, e.g. from a memory's statistics."""
        if not isinstance(weights, torch.Tensor) or weights.ndim != 2:
            raise ValueError(f"weights must be a tensor of shape (k, p), got {getattr(weights, 'shape', type(weights).__name__)}")
        if not bool(torch.isfinite(weights).all()):
            raise ValueError("weights contain NaN or Inf")
        model = cls(feature_map, reg=reg, n_classes=weights.shape[0], **params)
        model._check_params()
        n_features_in = check_int(n_features_in, "n_features_in", minimum=1)
        n_samples = check_int(n_samples, "n_samples", minimum=1)
        if weights.shape[1] != feature_map.out_features(n_features_in):
            raise ValueError(
                f"weights must have shape (k, {feature_map.out_features(n_features_in)}), found {tuple(weights.shape)}"
            )
        model.feature_map_ = feature_map
        model.n_features_in_ = n_features_in
        model._store(weights.detach().T.to(torch.float64), float(reg), n_samples, weights.shape[0], "given")
        return model

    # -- prediction ---------------------------------------------------------
    def decision_function(self, x: Any) -> torch.Tensor:
        """Scores W phi(x) of shape (n, k), float64 on the CPU."""
        self._check_fitted()
        xs = as_samples(x)
        if xs.shape[1] != self.n_features_in_:
            raise ValueError(f"x has {xs.shape[1]} features, the model was fitted on {self.n_features_in_}")
        device = resolve_device(self.device)
        fmap = self.feature_map_.on_device(device)
        weights_t = self.weights_.T.to(device)
        out = [
            (checked_features(fmap, xc, first_row=start).to(torch.float64) @ weights_t).cpu()
            for start, (xc, _) in zip(
                range(0, xs.shape[0], self.chunk_size), iter_array_chunks(xs, None, self.chunk_size, device)
            )
        ]
        return torch.cat(out)

    def predict(self, x: Any) -> torch.Tensor:
        """Class labels (n,) int64: argmax of the scores."""
        self._check_fitted()
        if self.n_classes_ < 2:
            raise ValueError(
                "this KRR was fitted on one target column (a regression target), so there is no class to "
                "predict; use decision_function(x) for its values, or fit on class labels of shape (n,)"
            )
        return self.decision_function(x).argmax(dim=1)

    def score(self, x: Any, y: Any) -> float:
        """Accuracy of ``predict(x)`` against labels (n,) or the argmax of targets (n, k)."""
        predicted = self.predict(x)
        targets, _ = as_targets(y, predicted.shape[0], self.n_classes_)
        return float((predicted == targets.argmax(dim=1)).to(torch.float64).mean())

    # -- helpers ------------------------------------------------------------
    def _eval_data(self, eval_set, device) -> tuple[torch.Tensor, torch.Tensor]:
        if not (isinstance(eval_set, (tuple, list)) and len(eval_set) == 2):
            raise ValueError("eval_set must be a pair (x_val, y_val)")
        xv = as_samples(eval_set[0], name="x_val")
        tv, _ = as_targets(eval_set[1], xv.shape[0], self.n_classes, name="y_val")
        return to_tensor(xv, device, name="x_val"), tv.to(device)

    def _check_auto_targets(self, k: int, name: str) -> None:
        if self.reg == "auto" and k < 2:
            raise ValueError(
                f'reg="auto" picks lambda by validation accuracy, which needs at least 2 classes, but {name} has '
                "one target column (a regression target); pass a number as reg"
            )

    def _reg_grid_values(self) -> list[float]:
        """The lambda candidates of reg="auto" as floats, each finite and >= 0."""
        if self.reg_grid is None:
            return [float(r) for r in default_reg_grid(self.feature_map_)]
        grid = self.reg_grid
        if isinstance(grid, (str, bytes)) or not isinstance(grid, (Sequence, np.ndarray, torch.Tensor)) or np.ndim(grid) != 1:
            raise TypeError(f"reg_grid must be a 1-D sequence of numbers >= 0, got {type(grid).__name__}")
        if len(grid) == 0:
            raise ValueError("reg_grid must be a non-empty sequence of values >= 0, got an empty one")
        return [check_real(r, f"reg_grid[{i}]", minimum=0) for i, r in enumerate(grid)]

    def _check_params(self) -> None:
        if self.feature_map is not None and not isinstance(self.feature_map, FeatureMap):
            raise TypeError(f"feature_map must be a distillmem FeatureMap, got {type(self.feature_map).__name__}")
        if isinstance(self.reg, str):
            if self.reg != "auto":
                raise ValueError(f'reg must be a float >= 0 or "auto", got {self.reg!r}')
            if self.reg_grid is not None:
                self._reg_grid_values()
        else:
            check_real(self.reg, "reg", minimum=0)
        check_int(self.seed, "seed")
        if not 0 < check_real(self.val_fraction, "val_fraction") < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.solver == "dual" and (self.reg == "auto" or self.reg == 0):
            raise ValueError(f'solver="dual" needs a fixed reg > 0, got reg={self.reg!r}: use solver="svd" or "auto"')
        if self.n_classes is not None:
            check_int(self.n_classes, "n_classes", minimum=1)
        check_int(self.chunk_size, "chunk_size", minimum=1)

    def _check_fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise RuntimeError("this KRR is not fitted yet: call fit(x, y) before predict or score")
