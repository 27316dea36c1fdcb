"""The pseudo-inverse every builder shares: its QR fast path and its rank-revealing fallbacks agree with the SVD."""

import pytest
import torch

from distillmem import _solvers
from distillmem._solvers import pinv


def _svd_pinv(matrix: torch.Tensor) -> torch.Tensor:
    return torch.linalg.pinv(matrix, rtol=max(matrix.shape) * torch.finfo(matrix.dtype).eps)


def _random(rows: int, cols: int, rank: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    left = torch.randn(rows, rank, generator=gen, dtype=torch.float64)
    return left @ torch.randn(rank, cols, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("shape", [(60, 25), (25, 60), (30, 30), (1, 7), (7, 1)])
def test_full_rank_matrices_take_the_qr_path_and_match_the_svd(shape, monkeypatch, rel_err):
    matrix = _random(*shape, rank=min(shape))
    calls = []
    monkeypatch.setattr(_solvers.torch.linalg, "pinv", lambda *a, **k: calls.append("svd"))
    monkeypatch.setattr(_solvers.torch.linalg, "lstsq", lambda *a, **k: calls.append("gelsy"))
    inverse = pinv(matrix)
    assert calls == []
    monkeypatch.undo()
    assert inverse.shape == shape[::-1]
    assert rel_err(inverse, _svd_pinv(matrix)) < 1e-10


@pytest.mark.parametrize("shape", [(60, 25), (25, 60)])
def test_rank_deficient_matrices_fall_back_to_a_rank_revealing_factorisation(shape, rel_err):
    # Rank 10 of 25: an inverse through R^-1 would be enormous; the minimum-norm pseudo-inverse is not.
    matrix = _random(*shape, rank=10, seed=1)
    inverse = pinv(matrix)
    assert rel_err(inverse, _svd_pinv(matrix)) < 1e-8
    # The four Moore-Penrose conditions hold.
    assert rel_err(matrix @ inverse @ matrix, matrix) < 1e-10
    assert rel_err(inverse @ matrix @ inverse, inverse) < 1e-10
    assert rel_err((matrix @ inverse).T, matrix @ inverse) < 1e-10
    assert rel_err((inverse @ matrix).T, inverse @ matrix) < 1e-10


def test_duplicate_columns_and_zero_matrices(rel_err):
    base = _random(40, 12, rank=12, seed=2)
    duplicated = torch.cat([base, base[:, :3]], dim=1)
    assert rel_err(pinv(duplicated), _svd_pinv(duplicated)) < 1e-8
    zeros = torch.zeros(5, 3, dtype=torch.float64)
    assert torch.equal(pinv(zeros), torch.zeros(3, 5, dtype=torch.float64))


def test_ill_conditioned_full_rank_matrix_keeps_its_small_singular_direction(rel_err):
    # Singular values 1 ... 1e-6: above the cut-off, so the pseudo-inverse inverts all of them.
    gen = torch.Generator().manual_seed(3)
    u, _ = torch.linalg.qr(torch.randn(50, 8, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen, dtype=torch.float64))
    matrix = u @ torch.diag(torch.logspace(0, -6, 8, dtype=torch.float64)) @ v.T
    assert rel_err(pinv(matrix), _svd_pinv(matrix)) < 1e-7



@pytest.fixture
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _blas_threads() -> set[int]:
    from threadpoolctl import threadpool_info

    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_scipy_linear_algebra_runs_on_torchs_thread_count(one_torch_thread, monkeypatch):
    from distillmem import _stats

    seen = {}
    real_eigh, real_syrk = _solvers.scipy.linalg.eigh, _stats.blas.dsyrk

    def spy(name, real):
        def call(*args, **kwargs):
            seen[name] = _blas_threads()
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(_solvers.scipy.linalg, "eigh", spy("eigh", real_eigh))
    monkeypatch.setattr(_stats.blas, "dsyrk", spy("syrk", real_syrk))
    features = torch.randn(50, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    gram = _stats._upper_gram(features)
    _solvers.eigh(features.T @ features)
    assert seen == {"eigh": {1}, "syrk": {1}}
    assert torch.allclose(gram.triu(), (features.T @ features).triu())
