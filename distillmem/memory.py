"""Moment memories: synthetic points that reproduce KRR on the data for every lambda.

A moment memory (docs/math.md §11) is a set of r synthetic feature rows
Phi_S (r, p) with dense targets T_S (r, k) such that

    Phi_S^T Phi_S = G = Phi^T Phi    and    Phi_S^T T_S = R = Phi^T T

for the data seen so far (samples are rows here). KRR depends on the data only
through (G, R), so a KRR head fitted on the memory equals the head fitted on
the data for every lambda >= 0, and the concatenation of the memories of
shards is a memory of their union. At most p points are ever needed; a budget
``max_points`` < rank trades exactness for size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from ._closed_form import refit_error, warn_if_inexact
from ._solvers import Spectral, rank_tol
from ._stats import checked_features, iter_array_chunks, iter_batches
from ._validation import as_samples, as_targets, check_data_args, check_int, check_real, resolve_device, to_tensor
from .distilled_set import DistilledSet
from .features import FeatureMap
from .krr import KRR
from .provenance import Provenance

SHRINKS = ("truncate", "frequent-directions")


class MomentMemory:
    """A bounded, mergeable memory whose KRR head equals KRR on all the data it absorbed.

    The memory is kept in canonical form: ``features_ = diag(s) V^T`` with
    orthonormal rows of V^T and s descending (the thin SVD of every row it
    absorbed), so its spectrum is the row norms. ``update`` streams the data
    in chunks: a QR of the stacked rows [memory; chunk] folds each chunk in
    (working memory O(p^2 + chunk * p), cost linear in n), and one thin SVD
    of the folded rows (at most p) restores the canonical form at the end of
    the call. Singular values below ``max(rows, p) * eps * s_1`` are dropped.

    With ``max_points=r`` the memory is cut to r points at the end of every
    ``update`` and ``merge``; within one ``update`` call the data is absorbed
    exactly, so one call per task (or per client round) loses the least:

    - ``"truncate"``: keep the top r directions of Phi_S (the spectral
      cut-off of docs/math.md §11.2; ``truncation_error`` predicts its weight
      error exactly).
    - ``"frequent-directions"`` (default): frequent-directions shrinkage
      (Liberty 2013; Ghashami et al. 2016) of the augmented rows
      A = [Phi_S, c T_S], c = ||Phi_S||_F / ||T_S||_F: with sigma the
      singular values of A, subtract delta = sigma_{r+1}^2 from every
      sigma_i^2 and keep the r positive rows. Sketching features and targets
      jointly bounds the errors of G and R together
      (0 <= A^T A - B^T B <= delta I) and keeps the directions that carry
      the targets.

    experiments/memory_stream.py compares the two rules, with one update per
    task and with many small updates, and against sketching the feature rows
    alone; its results are in experiments/results/ and the README.

    Parameters
    ----------
    feature_map : FeatureMap
        phi, fixed for the life of the memory.
    n_classes : int
        k, the number of target columns (class-incremental streams see only
        some classes per task). Integer labels need k >= 2; k = 1 holds one
        float regression target (n, 1), whose head has weights and
        ``decision_function`` but no ``predict``.
    max_points : int, optional
        Budget r, 1 <= r <= p; None keeps the memory exact (at most
        rank <= p points).
    shrink : {"frequent-directions", "truncate"}
        How the budget is enforced (see above).
    chunk_size : int
        Rows per chunk when computing features; also how many new rows are
        stacked before they are folded in.
    device : str or torch.device, optional
        Where features and factorisations run (the feature map is moved
        there); the state is kept on the CPU.

    Attributes
    ----------
    features_ : torch.Tensor of shape (r, p), float64
        Phi_S, rows orthogonal, row norms descending.
    targets_ : torch.Tensor of shape (r, k), float64
        T_S, dense real-valued targets (points are not tied to classes).
    n_seen_ : int
        Samples absorbed.
    n_features_in_ : int
        d, the input width.

    Examples
    --------
    >>> import torch
    >>> from distillmem import KRR, MomentMemory
    >>> from distillmem.features import Identity
    >>> x = torch.randn(400, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> y = torch.arange(400) % 3
    >>> memory = MomentMemory(Identity(), n_classes=3).update(x[:200], y[:200]).update(x[200:], y[200:])
    >>> memory.n_points, memory.n_seen_
    (20, 400)
    >>> head = memory.fit_krr(reg=0.1)
    >>> bool(torch.allclose(head.weights_, KRR(Identity(), reg=0.1).fit(x, y).weights_, rtol=0, atol=1e-12))
    True
    """

    def __init__(
        self,
        feature_map: FeatureMap,
        n_classes: int,
        *,
        max_points: int | None = None,
        shrink: str = "frequent-directions",
        chunk_size: int = 8192,
        device: str | torch.device | None = None,
    ) -> None:
        self.feature_map = feature_map
        self.n_classes = n_classes
        self.max_points = max_points
        self.shrink = shrink
        self.chunk_size = chunk_size
        self.device = device

    def __repr__(self) -> str:
        budget = "" if self.max_points is None else f", max_points={self.max_points}, shrink={self.shrink!r}"
        return f"MomentMemory({self.feature_map!r}, n_classes={self.n_classes}{budget}, n_points={self.n_points})"

    @property
    def n_points(self) -> int:
        """r, the number of synthetic points held (0 before the first update)."""
        return self.features_.shape[0] if hasattr(self, "features_") else 0

    # -- absorbing data -------------------------------------------------------
    def update(self, x: Any, y: Any = None) -> "MomentMemory":
        """Absorb samples x (n, d) or (n, C, H, W) with y (n,) labels or (n, k) targets.

        ``x`` may be a tensor or a numpy array (memory-mapped too) or, with
        ``y=None``, an iterable of (x, y) batches; the data is read chunk by
        chunk and never held whole. Features are computed in float64. The
        memory is updated in place and returned.
        """
        self._check_params()
        streamed = check_data_args(x, y)
        device = resolve_device(self.device)
        fmap = self.feature_map.on_device(device)
        if not streamed:
            xs = as_samples(x)
            targets, _ = as_targets(y, xs.shape[0], self.n_classes)
            chunks = iter_array_chunks(xs, targets, self.chunk_size, device)
        else:
            chunks = self._split(iter_batches(x, self.n_classes, device))
        width = {"d": getattr(self, "n_features_in_", None)}
        self._absorb(self._featurize(fmap, chunks, width), device)
        self.n_features_in_ = width["d"]
        return self

    @classmethod
    def from_features(
        cls, feature_map: FeatureMap, n_classes: int, features: Any, targets: Any, *, n_seen: int | None = None, **params: Any
    ) -> "MomentMemory":
        """A memory of feature rows (m, p) with targets (m,) labels or (m, k): e.g. another memory's points.

        This rebuilds a memory sent as arrays (``features_``, ``targets_``),
        for instance by a federated client; ``n_seen`` records how many samples
        they stand for (default m). ``params`` are the constructor's keywords.
        """
        memory = cls(feature_map, n_classes, **params)
        memory._check_params()
        if n_seen is not None:
            n_seen = check_int(n_seen, "n_seen", minimum=1)
        device = resolve_device(memory.device)
        f = as_samples(features, name="features")
        t, _ = as_targets(targets, f.shape[0], n_classes, name="targets")
        f = to_tensor(f, device, name="features").to(torch.float64)
        width = _input_width(feature_map, f.shape[1])
        if feature_map.out_features(width) != f.shape[1]:
            raise ValueError(f"features have width {f.shape[1]}, {feature_map!r} gives {feature_map.out_features(width)}")
        memory._absorb([(f, t.to(device))], device, n_seen=n_seen)
        memory.n_features_in_ = width
        return memory

    @classmethod
    def from_distilled_set(cls, distilled: DistilledSet, **params: Any) -> "MomentMemory":
        """The memory of a DistilledSet's points: their G and R, hence their KRR model at every lambda.

        A set from ``distill`` (exact at its own reg) or ``to_distilled_set``
        stores features and targets divided by a range scale s (``provenance.range_scale``,
        1 for Identity and FCNN maps) and reg divided by
        s^2; the memory undoes that, so ``fit_krr(distilled.reg * s**2)``
        gives the set's model. ``params`` are the constructor's keywords.
        """
        if not isinstance(distilled, DistilledSet):
            raise TypeError(f"distilled must be a DistilledSet, got {type(distilled).__name__}")
        fmap = distilled.feature_map()
        scale = distilled.provenance.range_scale
        device = resolve_device(params.get("device"))
        x = to_tensor(distilled.x, device, name="distilled.x").to(torch.float64)
        fmap.to(device).check_input(x)
        return cls.from_features(
            fmap, distilled.n_classes, scale * fmap(x), scale * distilled.y.to(torch.float64), n_seen=len(distilled), **params
        )

    # -- combining and compressing ----------------------------------------------
    def merge(self, other: "MomentMemory") -> "MomentMemory":
        """A new memory of the union of both memories' data (neither input changes).

        Exact, associative and order-free up to a rotation of the points; the
        result has this memory's parameters, so a budget is applied after the
        merge. An empty memory is the neutral element.
        """
        if not isinstance(other, MomentMemory):
            raise TypeError(f"can only merge a MomentMemory, got {type(other).__name__}")
        self._check_params()
        if self.feature_map.spec() != other.feature_map.spec():
            raise ValueError(
                f"cannot merge memories of different feature maps: {self.feature_map.spec()} != {other.feature_map.spec()}"
            )
        if self.n_classes != other.n_classes:
            raise ValueError(f"cannot merge memories with different n_classes: {self.n_classes} != {other.n_classes}")
        widths = {m.n_features_in_ for m in (self, other) if hasattr(m, "n_features_in_")}
        if len(widths) > 1:
            raise ValueError(f"cannot merge memories of inputs of different widths: {sorted(widths)}")
        merged = self._like()
        parts = [m for m in (self, other) if hasattr(m, "features_")]
        if not parts:
            return merged
        device = resolve_device(self.device)
        features = torch.cat([m.features_ for m in parts]).to(device)
        targets = torch.cat([m.targets_ for m in parts]).to(device)
        merged.n_features_in_ = parts[0].n_features_in_
        merged._absorb([(features, targets)], device, n_seen=sum(m.n_seen_ for m in parts), carry=False)
        return merged

    def compress(self, r: int) -> "MomentMemory":
        """A new memory of at most r points, by this memory's ``shrink``; exact when r >= n_points."""
        self._check_fitted()
        self._check_params()
        r = self._check_budget(r, "r")
        compressed = self._like()
        compressed.features_, compressed.targets_ = _shrink(self.features_, self.targets_, r, self.shrink)
        compressed.n_seen_ = self.n_seen_
        compressed.n_features_in_ = self.n_features_in_
        return compressed

    def truncation_error(self, r: int, reg: float) -> float:
        """||W(reg) - W_r(reg)||_F / ||W(reg)||_F for the top r directions, from the spectrum (no refit).

        docs/math.md §11.2: ||W - W_r||^2 = sum_{i > r} ||u_i^T R||^2 / (e_i + reg)^2,
        here with e_i = s_i^2 and u_i^T R = s_i t_i (t_i the i-th target row).
        This is the error of ``compress(r)`` with ``shrink="truncate"``.
        """
        self._check_fitted()
        r = self._check_budget(r, "r")
        reg = check_real(reg, "reg", minimum=0)
        sq = self.features_.square().sum(dim=1)
        contrib = sq * self.targets_.square().sum(dim=1) / (sq + reg) ** 2
        total = float(contrib.sum())
        return 0.0 if total == 0.0 else math.sqrt(float(contrib[r:].sum()) / total)

    # -- using the memory ---------------------------------------------------------
    def fit_krr(self, reg: float) -> KRR:
        """The KRR head at ``reg`` >= 0: its weights equal KRR on all the absorbed data."""
        self._check_fitted()
        reg = check_real(reg, "reg", minimum=0)
        return KRR.from_weights(
            self.feature_map,
            _spectral(self.features_, self.targets_).weights_t(reg).T,
            reg,
            n_features_in=self.n_features_in_,
            n_samples=self.n_seen_,
            chunk_size=self.chunk_size,
            device=self.device,
        )

    def to_distilled_set(
        self,
        reg: float,
        *,
        align_to: Any = None,
        image_shape: tuple[int, ...] | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ) -> DistilledSet:
        """The memory as points in input space: KRR on the set with its ``reg`` gives ``fit_krr(reg)``.

        Needs a surjective map (points are preimages of the feature rows).
        Maps with a bounded range (RFF) get features and targets divided by
        s = ``range_scale`` and ``reg / s**2`` stored as the set's reg; any
        other lambda' is reached by fitting the set with ``lambda' / s**2``
        (s is in ``provenance.range_scale``).

        ``align_to`` : real inputs (m', d) with m' >= n_points. The points are
        rotated (any Q with Q^T Q = I keeps G and R) by orthogonal Procrustes
        so that their features lie closest to phi(align_to); with m' > r the
        memory is spread over m' points. Labels are the argmax of each target
        row. ``image_shape``, ``mean`` and ``std`` are stored in the set.
        """
        self._check_fitted()
        reg = check_real(reg, "reg", minimum=0)
        fmap = self.feature_map
        if not fmap.surjective:
            raise ValueError(
                f"feature map {fmap!r} is not surjective, so the memory's feature rows have no preimage; "
                "keep the memory in feature space (features_, targets_) or use a map with p <= d"
            )
        if self.n_points == 0:
            raise ValueError("the memory has no points (its features are all zero): nothing to turn into a set")
        device = resolve_device(self.device)
        fmap = fmap.on_device(device)
        features, targets = self.features_.to(device), self.targets_.to(device)
        if align_to is not None:
            reference = to_tensor(as_samples(align_to, name="align_to"), device, name="align_to").to(torch.float64)
            fmap.check_input(reference)
            if reference.shape[0] < features.shape[0]:
                raise ValueError(
                    f"align_to has {reference.shape[0]} points, the memory {features.shape[0]}: "
                    "Procrustes alignment needs at least as many reference points as memory points"
                )
            rotation = _procrustes(features, fmap(reference))
            features, targets = rotation @ features, rotation @ targets
        scale = float(fmap.range_scale(features))
        features, targets, reg_set = features / scale, targets / scale, reg / scale**2
        points = fmap.preimage(features)
        error = refit_error(fmap, points, targets, reg_set, self.fit_krr(reg).weights_, device=self.device)
        warn_if_inexact(error, "the set's model differs from the memory's")
        return DistilledSet(
            x=points.cpu(),
            y=targets.cpu(),
            labels=targets.argmax(dim=1).cpu(),
            feature_map_spec=fmap.spec(),
            reg=reg_set,
            image_shape=image_shape,
            mean=mean,
            std=std,
            provenance=Provenance(
                method="moments", n=self.n_seen_, teacher_reg=reg, reg_s=reg, range_scale=scale, recovery_error=error,
                extras={"memory_points": self.n_points, "max_points": self.max_points, "shrink": self.shrink,
                        "aligned": align_to is not None},
            ),
        )

    # -- internals --------------------------------------------------------------
    @staticmethod
    def _featurize(fmap: FeatureMap, chunks: Iterable[tuple[torch.Tensor, torch.Tensor]], width: dict[str, int | None]):
        """float64 feature rows of each (x, targets) chunk; width["d"] is checked, then set."""
        for x, t in chunks:
            if width["d"] is not None and x.shape[1] != width["d"]:
                raise ValueError(f"x has {x.shape[1]} features, the memory holds inputs of width {width['d']}")
            width["d"] = x.shape[1]
            yield checked_features(fmap, x.to(torch.float64)), t.to(torch.float64)

    def _split(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]):
        """Cut batches larger than chunk_size, so features are computed chunk by chunk."""
        for x, t in batches:
            for start in range(0, x.shape[0], self.chunk_size):
                yield x[start : start + self.chunk_size], t[start : start + self.chunk_size]

    def _absorb(self, chunks, device: torch.device, *, n_seen: int | None = None, carry: bool = True) -> None:
        """Fold feature/target rows into the memory: QR per chunk_size rows, SVD at the end, then the budget."""
        features = [self.features_.to(device)] if carry and hasattr(self, "features_") else []
        targets = [self.targets_.to(device)] if carry and hasattr(self, "targets_") else []
        pending = rows = 0
        for f, t in chunks:
            if rows == 0 and self.max_points is not None:
                self._check_budget(self.max_points, "max_points", f.shape[1])
            features.append(f)
            targets.append(t)
            pending += f.shape[0]
            rows += f.shape[0]
            if pending >= self.chunk_size:
                folded_f, folded_t = _fold(torch.cat(features), torch.cat(targets))
                features, targets, pending = [folded_f], [folded_t], 0
        if rows == 0:
            raise ValueError("the data is empty: no batch was given")
        f, t = torch.cat(features), torch.cat(targets)
        if f.shape[0] > f.shape[1]:
            f, t = _fold(f, t)  # the SVD of p rows is far cheaper than that of a tall stack
        f, t = _canonical(f, t)
        if self.max_points is not None:
            f, t = _shrink(f, t, int(self.max_points), self.shrink)
        self.features_, self.targets_ = f.cpu(), t.cpu()
        self.n_seen_ = (self.n_seen_ if carry and hasattr(self, "n_seen_") else 0) + (rows if n_seen is None else int(n_seen))

    def _like(self) -> "MomentMemory":
        return type(self)(
            self.feature_map, self.n_classes, max_points=self.max_points, shrink=self.shrink,
            chunk_size=self.chunk_size, device=self.device,
        )

    def _check_budget(self, r: Any, name: str, p: int | None = None) -> int:
        p = self.features_.shape[1] if p is None else p
        r = check_int(r, name)
        if not 1 <= r <= p:
            raise ValueError(f"{name} must be an integer in 1..p={p} (a memory never needs more than p points), got {r}")
        return r

    def _check_params(self) -> None:
        if not isinstance(self.feature_map, FeatureMap):
            raise TypeError(f"feature_map must be a distillmem FeatureMap, got {type(self.feature_map).__name__}")
        check_int(self.n_classes, "n_classes", minimum=1)
        if self.max_points is not None:
            check_int(self.max_points, "max_points", minimum=1)
        if self.shrink not in SHRINKS:
            raise ValueError(f"shrink must be one of {SHRINKS}, got {self.shrink!r}")
        check_int(self.chunk_size, "chunk_size", minimum=1)

    def _check_fitted(self) -> None:
        if not hasattr(self, "features_"):
            raise RuntimeError("this MomentMemory is empty: call update(x, y) first")


# -- pure tensor functions ---------------------------------------------------------


def _fold(features: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """At most p rows with the same F^T F and F^T T: R of the QR of [F, T], first min(m, p) rows.

    [F, T] = Q [R11 R12; 0 R22] gives F^T F = R11^T R11 and F^T T = R11^T R12.
    """
    p = features.shape[1]
    upper = torch.linalg.qr(torch.cat([features, targets], dim=1), mode="r")[1][:p]
    return upper[:, :p], upper[:, p:]


def _canonical(features: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(diag(s) V^T, U^T T) from the thin SVD F = U diag(s) V^T, directions below the rank tolerance dropped."""
    if features.shape[0] == 0:
        return features, targets
    left, sing, right_t = torch.linalg.svd(features, full_matrices=False)
    keep = sing > rank_tol(features, float(sing[0]))
    return sing[keep, None] * right_t[keep], left[:, keep].T @ targets


def _shrink(features: torch.Tensor, targets: torch.Tensor, r: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """At most r canonical rows: the top r (truncate), or frequent directions on [F, c T]."""
    if features.shape[0] <= r:
        return features, targets
    if mode == "truncate":
        return features[:r], targets[:r]
    p = features.shape[1]
    t_norm = float(torch.linalg.norm(targets))
    c = float(torch.linalg.norm(features)) / t_norm if t_norm > 0 else 1.0
    _, sing, right_t = torch.linalg.svd(torch.cat([features, c * targets], dim=1), full_matrices=False)
    shrunk = (sing[:r].square() - sing[r].square()).clamp_min(0).sqrt()
    rows = shrunk[:, None] * right_t[:r]
    return _canonical(rows[:, :p], rows[:, p:] / c)


def _spectral(features: torch.Tensor, targets: torch.Tensor) -> Spectral:
    """W^T(reg) = V diag(s / (s^2 + reg)) T_S for canonical rows diag(s) V^T."""
    sing = torch.linalg.norm(features, dim=1)
    return Spectral(eig=sing.square(), lift=(features / sing[:, None]).T, coef=sing[:, None] * targets)


def _procrustes(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """P (m', r) with P^T P = I minimising ||P F - F_ref||_F: P = A B^T from F_ref F^T = A diag B^T."""
    left, _, right_t = torch.linalg.svd(reference @ features.T, full_matrices=False)
    return left @ right_t


def _input_width(fmap: FeatureMap, p: int) -> int:
    """d for a map of output width p: its in_features, or p for a width-agnostic Identity."""
    width = getattr(fmap, "in_features", None)
    return p if width is None else int(width)
