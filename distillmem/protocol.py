"""The paper's evaluation protocol as one call: load, fit, distil, refit, test.

Chen et al. (2024), section 6 / docs/math.md §9: fit the original KRR on a
seeded 95% split with lambda chosen on the other 5%, distil its weights,
recompute phi on the recovered points, refit, and compare test accuracies.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from ._stats import iter_array_chunks
from ._validation import as_samples, resolve_device
from .data import ImageDataset, load_dataset
from .distill import KRRDistiller
from .distilled_set import DistilledSet
from .features import FeatureMap, Identity, RandomFCNN, RandomFourier
from .krr import KRR

FEATURE_MAPS = ("identity", "fcnn", "rff")


def make_feature_map(name: str, in_features: int, seed: int = 0) -> FeatureMap:
    """The paper's maps with p = d: "identity", "fcnn" (one LeakyReLU layer) or "rff"."""
    if name == "identity":
        return Identity(in_features)
    if name == "fcnn":
        return RandomFCNN(in_features, seed=seed)
    if name == "rff":
        return RandomFourier(in_features, seed=seed)
    raise ValueError(f"unknown feature map {name!r}; choose from {FEATURE_MAPS}")


def _predict_both(first: KRR, second: KRR, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels (n,) of two models with the same feature map, computing phi(x) once."""
    fmap = first.feature_map_
    device = resolve_device(first.device)
    weights = torch.stack([first.weights_, second.weights_]).to(device)  # (2, k, p)
    labels = [
        (fmap(chunk).to(torch.float64) @ weights.transpose(1, 2)).argmax(dim=2).cpu()
        for chunk, _ in iter_array_chunks(as_samples(x), None, first.chunk_size, device)
    ]
    first_labels, second_labels = torch.cat(labels, dim=1)
    return first_labels, second_labels


@dataclass
class RunResult:
    """One run of the protocol; accuracies are fractions in [0, 1]."""

    dataset: str
    feature_map: str
    ipc: int
    seed: int
    init: str
    n_train: int
    n_test: int
    reg: float
    original_accuracy: float
    distilled_accuracy: float
    agreement: float  # share of test points where both models predict the same class
    recovery_error: float
    seconds: float  # from loading the data to the distilled model's test accuracy
    distilled: DistilledSet


def run_protocol(
    dataset: str = "digits",
    root: str | os.PathLike | None = None,
    *,
    feature_map: str = "fcnn",
    ipc: int = 10,
    seed: int = 0,
    init: str = "noise",
    reg: float | str = "auto",
    reg_s: float | str = 0.0,
    device: str | torch.device | None = None,
    progress: bool = False,
    data: ImageDataset | None = None,
) -> RunResult:
    """Run the protocol on ``dataset`` (read from ``root``, or ``data`` if already loaded)."""
    start = time.perf_counter()
    if data is None:
        data = load_dataset(dataset, root)
    fmap = make_feature_map(feature_map, data.n_features, seed)
    teacher = KRR(fmap, reg=reg, seed=seed, refit=False, n_classes=data.n_classes, device=device, progress=progress)
    teacher.fit(data.x_train, data.y_train)
    distiller = KRRDistiller(ipc=ipc, reg_s=reg_s, init=init, seed=seed, device=device)
    distiller.fit(data.x_train, data.y_train, teacher=teacher, dataset=data.name, mean=data.mean, std=data.std)
    distilled = distiller.distilled_
    student = distilled.fit_krr(device=device)
    original, distilled_pred = _predict_both(teacher, student, data.x_test)
    seconds = time.perf_counter() - start
    return RunResult(
        dataset=data.name,
        feature_map=feature_map,
        ipc=ipc,
        seed=seed,
        init=init,
        n_train=teacher.n_samples_,
        n_test=len(data.y_test),
        reg=teacher.reg_,
        original_accuracy=float((original == data.y_test).double().mean()),
        distilled_accuracy=float((distilled_pred == data.y_test).double().mean()),
        agreement=float((original == distilled_pred).double().mean()),
        recovery_error=distiller.recovery_error_,
        seconds=seconds,
        distilled=distilled,
    )
