"""Shared fixtures: seeded random classification problems and naive KRR references."""

from __future__ import annotations

import pytest
import torch

# The problems here are tiny: one intra-op thread avoids thread start-up and
# contention costs that otherwise dominate the run time on small machines.
torch.set_num_threads(1)


def _problem(
    n: int = 300, d: int = 40, k: int = 4, seed: int = 0, task: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (n, d) float64: class means plus unit noise; y (n,) int64 with every class present.

    ``task`` seeds the class means, ``seed`` the samples: two calls with the same
    task and different seeds are a train and a test set of one problem.
    """
    means = 1.5 * torch.randn(k, d, generator=torch.Generator().manual_seed(10_000 + task), dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % k
    labels = labels[torch.randperm(n, generator=gen)]
    x = means[labels] + torch.randn(n, d, generator=gen, dtype=torch.float64)
    return x, labels


def _naive_ridge(features: torch.Tensor, targets: torch.Tensor, reg: float) -> torch.Tensor:
    """W (k, p) minimising ||F W^T - T||^2 + reg ||W||^2, from the thin SVD F = U S V^T.

    W^T = V diag(s / (s^2 + reg)) U^T T; for reg = 0 this is pinv(F) T, the
    minimum-norm least-squares solution (torch.linalg.pinv's default cut-off).
    The SVD form does not square the condition number of F, so it stays a
    float64-exact reference on the ill-conditioned distilled sets too.
    """
    features = features.to(torch.float64)
    targets = targets.to(torch.float64)
    if reg == 0:
        return (torch.linalg.pinv(features) @ targets).T
    u, s, vh = torch.linalg.svd(features, full_matrices=False)
    return (vh.T @ ((s / (s**2 + reg))[:, None] * (u.T @ targets))).T


def _gram_ridge(features: torch.Tensor, targets: torch.Tensor, reg: float) -> torch.Tensor:
    """The same ridge from the explicit Gram (n >= p) or kernel (n < p) with torch.linalg.solve; reg > 0."""
    features = features.to(torch.float64)
    targets = targets.to(torch.float64)
    n, p = features.shape
    if n >= p:
        gram = features.T @ features + reg * torch.eye(p, dtype=torch.float64)
        return torch.linalg.solve(gram, features.T @ targets).T
    kernel = features @ features.T + reg * torch.eye(n, dtype=torch.float64)
    return (features.T @ torch.linalg.solve(kernel, targets)).T


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b||_F / ||b||_F in float64."""
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    return float(torch.sqrt(((a - b) ** 2).sum()) / torch.sqrt((b**2).sum()))


@pytest.fixture
def make_problem():
    """Factory: make_problem(n=300, d=40, k=4, seed=0, task=0) -> (x, y)."""
    return _problem


@pytest.fixture
def problem():
    """A seeded (300, 40) float64 problem with 4 classes."""
    return _problem()


@pytest.fixture
def naive_ridge():
    return _naive_ridge


@pytest.fixture
def gram_ridge():
    return _gram_ridge


@pytest.fixture
def rel_err():
    return _rel_err


def pytest_configure(config: pytest.Config) -> None:
    # Slower end-to-end federated runs, selectable with -m (CI runs them too).
    config.addinivalue_line("markers", "ray: runs the federated app on Flower's Simulation Engine (Ray)")
    config.addinivalue_line("markers", "flwr_run: runs `flwr run .` with a managed local SuperLink")
    config.addinivalue_line("markers", "deployment: a real SuperLink and SuperNodes as processes on loopback (TLS)")
