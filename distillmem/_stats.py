"""Streaming sufficient statistics of KRR: G = Phi^T Phi and R = Phi^T T.

Samples are rows here: features Phi of shape (n, p), targets T of shape (n, k).
Memory is O(p^2 + chunk * p) whatever n is.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.linalg import blas
from tqdm.auto import tqdm

from ._solvers import scipy_threads
from ._validation import ArrayLike, as_samples, as_targets, first_nonfinite_row, is_array, to_tensor
from .features import FeatureMap


@dataclass
class Moments:
    """Gram (p, p) and cross moments (p, k) in float64, over n samples of width d."""

    gram: torch.Tensor
    cross: torch.Tensor
    n: int
    in_features: int

    def __add__(self, other: "Moments") -> "Moments":
        return Moments(self.gram + other.gram, self.cross + other.cross, self.n + other.n, self.in_features)


def iter_array_chunks(
    x: ArrayLike, targets: torch.Tensor | None, chunk_size: int, device: torch.device, name: str = "x"
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Chunks (b, d) of an in-memory or memory-mapped (n, d) array, with their targets (b, k)."""
    release = _consumed_page_releaser(x)
    for start in range(0, x.shape[0], chunk_size):
        chunk = to_tensor(x[start : start + chunk_size], device, first_row=start, name=name)
        yield chunk, None if targets is None else targets[start : start + chunk_size].to(device)
        release(start + chunk.shape[0])


def _consumed_page_releaser(x: ArrayLike) -> Callable[[int], None]:
    """A function of the row count read so far that unmaps those rows' pages from a read-only memmap.

    Pages of a file mapping count in the process's resident memory until
    unmapped, so reading a 3 GB memmap once would hold 3 GB; MADV_DONTNEED on
    a read-only shared mapping drops them from this process only (the file's
    page cache keeps them). Other arrays, and writable or copy-on-write maps,
    get a no-op: there the pages may hold data not in the file.
    """
    handle = getattr(x, "_mmap", None)
    if not (isinstance(x, np.memmap) and handle is not None and x.mode == "r" and x.flags["C_CONTIGUOUS"]):
        return lambda rows: None
    origin = x.ctypes.data - np.frombuffer(handle, dtype=np.uint8).ctypes.data  # first row's byte in the map
    row_bytes = x.strides[0]
    released = 0

    def release(rows: int) -> None:
        nonlocal released
        end = (origin + rows * row_bytes) // mmap.PAGESIZE * mmap.PAGESIZE
        if end > released:
            handle.madvise(mmap.MADV_DONTNEED, released, end - released)
            released = end

    return release


def iter_batches(
    batches: Iterable[Any], n_classes: int | None, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Validated (x, targets) chunks from an iterable of (x, y) batches."""
    width = None
    seen = 0
    for i, batch in enumerate(batches):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError(f"batch {i} must be an (x, y) pair, got {type(batch).__name__}")
        xb = as_samples(batch[0], name=f"x of batch {i}")
        if width is not None and xb.shape[1] != width:
            raise ValueError(f"batch {i} has {xb.shape[1]} features, earlier batches had {width}")
        width = xb.shape[1]
        if not (is_array(batch[1]) and batch[1].ndim == 2) and n_classes is None:
            raise ValueError("n_classes is required when fitting on an iterable of batches with integer labels")
        tb, _ = as_targets(batch[1], xb.shape[0], n_classes, name=f"y of batch {i}")
        n_classes = tb.shape[1]
        yield to_tensor(xb, device, first_row=seen, name=f"x of batch {i}"), tb.to(device)
        seen += xb.shape[0]


def checked_features(feature_map: FeatureMap, x: torch.Tensor, *, first_row: int = 0, name: str = "x") -> torch.Tensor:
    """phi(x) of shape (b, p) for a clean chunk x (b, d), in the dtype of x; NaN/Inf refused.

    Finite float32 inputs can still overflow inside the map (3e38 times a weight):
    one reduction per chunk catches it before an Inf or NaN reaches a solve.
    """
    feature_map.check_input(x)
    features = feature_map(x)
    bad = first_nonfinite_row(features)
    if bad is not None:
        raise ValueError(
            f"the features of {name} are not finite (NaN or Inf, first at row {bad + first_row}): the inputs "
            f"overflowed in the feature map's {features.dtype} arithmetic; pass float64 inputs or scale them down"
        )
    return features


def accumulate_moments(
    feature_map: FeatureMap,
    chunks: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    progress: bool = False,
    total: int | None = None,
) -> Moments:
    """Moments of phi over (x, targets) chunks: features in the chunk dtype, widened to
    float64 before they are multiplied, so G and R are float64 sums of the features."""
    gram = cross = None
    n = 0
    for x, t in tqdm(chunks, total=total, desc="features", unit="chunk", disable=not progress, leave=False, delay=1.0):
        f = checked_features(feature_map, x, first_row=n).to(torch.float64)
        chunk_gram = _upper_gram(f)
        # (T^T F)^T, not F^T T: the same sums, but a row-major (k, b) @ (b, p) product is
        # several times faster than a product with the transposed (p, b) view for small k.
        chunk_cross = (t.to(torch.float64).T @ f).T.contiguous()
        if gram is None:
            gram, cross = chunk_gram, chunk_cross
        else:
            gram += chunk_gram
            cross += chunk_cross
        n += x.shape[0]
    if gram is None:
        raise ValueError("the data is empty: no batch was given")
    gram = gram.triu() + gram.triu(1).T
    if not bool(torch.isfinite(gram).all()):
        raise ValueError("the features overflowed (non-finite Gram matrix): scale the inputs down")
    return Moments(gram, cross, n, x.shape[1])


def _upper_gram(f: torch.Tensor) -> torch.Tensor:
    """F^T F (p, p) for float64 features F (b, p); on the CPU only its upper triangle is valid.

    BLAS syrk computes one triangle, half the work of a matrix product; the
    caller symmetrises the accumulated sum once.
    """
    if f.device.type != "cpu":
        return f.T @ f
    # A row-major (b, p) array is the Fortran-ordered (p, b) array F^T: no copy.
    with scipy_threads():
        return torch.from_numpy(blas.dsyrk(1.0, f.contiguous().numpy().T, trans=0, lower=0))


def n_chunks(n: int, chunk_size: int) -> int:
    return -(-n // chunk_size)
