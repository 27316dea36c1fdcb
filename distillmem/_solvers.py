"""Float64 ridge solves on rows-as-samples statistics.

Every function returns W^T of shape (p, k): the KRR weights transposed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache

import scipy.linalg
import torch
from threadpoolctl import ThreadpoolController


def rank_tol(matrix: torch.Tensor, top: float) -> float:
    """The pinv/matrix_rank cut-off of torch: max(rows, cols) * eps * largest singular value."""
    return max(matrix.shape) * torch.finfo(matrix.dtype).eps * top


#: A QR factor whose diagonal spans less than this ratio may hide a rank deficiency: pinv then factorises anew.
_QR_DIAGONAL_RATIO = 1e-8


def pinv(matrix: torch.Tensor) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse (n, m) of a matrix (m, n), with torch's explicit relative tolerance.

    A matrix of full rank is inverted through the QR factors of its tall
    orientation, about three times faster than the SVD and as accurate there:
    pinv(A) = R^-1 Q^T for A = QR with m >= n. The diagonal of R bounds its
    condition number from below, so a ratio under ``_QR_DIAGONAL_RATIO`` (a
    numerically rank-deficient or near-singular matrix) takes a rank-revealing
    factorisation instead: on the CPU LAPACK's complete orthogonal one (gelsy,
    pivoted QR; a little faster than the SVD even after the QR that failed),
    elsewhere the SVD. Both drop what lies below ``rank_tol`` (max(m, n) eps
    times the largest singular value), as torch.linalg.pinv does.
    """
    rtol = rank_tol(matrix, 1.0)
    wide = matrix.shape[0] < matrix.shape[1]
    tall = matrix.T if wide else matrix
    if tall.shape[1] > 0:
        q, r = torch.linalg.qr(tall)
        diagonal = r.diagonal().abs()
        if bool(torch.isfinite(r).all()) and float(diagonal.min()) > _QR_DIAGONAL_RATIO * float(diagonal.max()):
            inverse = torch.linalg.solve_triangular(r, q.T, upper=True)
            return inverse.T if wide else inverse
        if matrix.device.type == "cpu" and bool(torch.isfinite(matrix).all()):
            eye = torch.eye(matrix.shape[0], dtype=matrix.dtype)
            return torch.linalg.lstsq(matrix, eye, rcond=rtol, driver="gelsy").solution
    return torch.linalg.pinv(matrix, rtol=rtol)


@lru_cache(maxsize=1)
def _blas_pools() -> ThreadpoolController:
    return ThreadpoolController()


def scipy_threads():
    """A context in which SciPy's BLAS and LAPACK use torch's thread count (``torch.get_num_threads()``).

    torch.set_num_threads then governs all of the engine's CPU linear algebra.
    Left alone, OpenBLAS keeps one thread per core, and on cores busy with
    other work its spinning threads run a factorisation many times slower.
    """
    return _blas_pools().limit(limits=torch.get_num_threads(), user_api="blas")


def eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ascending eigenvalues and eigenvectors of a symmetric matrix.

    On the CPU LAPACK's divide-and-conquer driver through SciPy, chosen over
    torch.linalg.eigh for its speed on large Grams (1.2x at p = 1500,
    experiments/solver_timing.py).
    """
    if matrix.device.type != "cpu":
        return torch.linalg.eigh(matrix)
    with scipy_threads():
        eig, vecs = scipy.linalg.eigh(matrix.numpy(), driver="evd", check_finite=False)
    return torch.from_numpy(eig), torch.from_numpy(vecs)


def solve_primal(gram: torch.Tensor, cross: torch.Tensor, reg: float) -> torch.Tensor:
    """W^T = (G + reg I)^-1 R, or G^+ R for reg = 0; G (p, p), R (p, k)."""
    if reg > 0:
        shifted = gram.clone()
        shifted.diagonal().add_(reg)
        factor, info = torch.linalg.cholesky_ex(shifted)
        if int(info) == 0:
            return torch.cholesky_solve(cross, factor)
        warnings.warn("G + reg*I is not numerically positive definite; using the eigendecomposition", stacklevel=3)
    return Spectral.primal(gram, cross).weights_t(reg)


def solve_dual(features: torch.Tensor, targets: torch.Tensor, reg: float) -> torch.Tensor:
    """W^T = Phi^T (Phi Phi^T + reg I)^-1 T for features Phi (n, p), targets T (n, k) and reg > 0; the SVD if
    the shifted kernel is not numerically positive definite."""
    kernel = features @ features.T
    kernel.diagonal().add_(reg)
    factor, info = torch.linalg.cholesky_ex(kernel)
    if int(info) == 0:
        return features.T @ torch.cholesky_solve(targets, factor)
    warnings.warn("Phi Phi^T + reg*I is not numerically positive definite; using the SVD", stacklevel=3)
    return Spectral.svd(features, targets).weights_t(reg)


@dataclass
class Spectral:
    """W^T(reg) = lift diag(1 / (eig + reg)) coef for every reg from one eigendecomposition.

    Primal: G = U diag(e) U^T, lift = U, coef = U^T R.
    SVD:    Phi = U diag(s) V^T, e = s^2, lift = V, coef = diag(s) U^T T; this
            never forms a Gram, so it keeps the full precision at reg = 0.
    Directions below the rank tolerance are dropped, which makes reg = 0 the
    pseudo-inverse solution.
    """

    eig: torch.Tensor  # (r,)
    lift: torch.Tensor  # (p, r)
    coef: torch.Tensor  # (r, k)

    def __post_init__(self) -> None:
        # Finite features of magnitude ~1e155 and more square to Inf: 1 / (Inf + reg) would
        # silently zero those directions (every prediction class 0), so refuse them.
        if not bool(torch.isfinite(self.eig).all() and torch.isfinite(self.coef).all()):
            raise ValueError(
                "the features are too large for float64: their squared singular values overflow; scale the inputs down"
            )

    @classmethod
    def primal(cls, gram: torch.Tensor, cross: torch.Tensor) -> "Spectral":
        eig, vecs = eigh(gram)
        keep = eig > rank_tol(gram, float(eig[-1].clamp_min(0)))
        vecs = vecs[:, keep]
        return cls(eig[keep], vecs, vecs.T @ cross)

    @classmethod
    def svd(cls, features: torch.Tensor, targets: torch.Tensor) -> "Spectral":
        left, sing, right_t = torch.linalg.svd(features, full_matrices=False)
        keep = sing > rank_tol(features, float(sing[0])) if sing.numel() else sing > 0
        left, sing = left[:, keep], sing[keep]
        return cls(sing**2, right_t[keep].T, sing[:, None] * (left.T @ targets))

    def weights_t(self, reg: float) -> torch.Tensor:
        return self.lift @ (self.coef / (self.eig + reg)[:, None])

    def weights_t_grid(self, regs: list[float]) -> torch.Tensor:
        """W^T for every reg side by side, (p, len(regs) * k): scoring features (n, p)
        against it costs O(n p k) per reg, not the O(n p r) of projecting onto the basis."""
        return torch.cat([self.weights_t(reg) for reg in regs], dim=1)
