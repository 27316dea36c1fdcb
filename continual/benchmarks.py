"""Offline class- and task-incremental benchmarks from local files, through the engine's loaders."""

from __future__ import annotations

import os

import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.benchmarks.scenarios.deprecated.new_classes.nc_scenario import NCScenario
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as tensor_dataset

from distillmem.data import DATASETS, load_dataset


def split_benchmark(
    name: str,
    data: str | os.PathLike[str] | None = None,
    *,
    n_experiences: int = 5,
    seed: int = 0,
    task_labels: bool = False,
    class_order: list[int] | None = None,
) -> NCScenario:
    """Split a dataset into ``n_experiences`` experiences of disjoint classes.

    Images are float32 (C, H, W), normalised per channel as by
    ``distillmem.data.load_dataset``; no augmentation. The class order is a
    permutation drawn from ``seed`` (a private generator: torch's global state
    is left alone) unless ``class_order`` is given; classes keep their global
    ids. With C classes, the first C mod n_experiences experiences get one
    class more.

    Parameters
    ----------
    name : {"digits", "mnist", "fashion-mnist", "cifar10", "cifar100"}
        ``"digits"`` is embedded (scikit-learn's 8 x 8 digits) and takes no ``data``.
    data : path, optional
        A ``.npz`` file, a folder of IDX files or a torchvision root (see ``load_dataset``).
    n_experiences : int
        1 <= n_experiences <= number of classes.
    seed : int
        Seed of the class order.
    task_labels : bool
        Task-incremental: experience i carries task label i (class-incremental: all 0).
    class_order : list of int, optional
        A permutation of the class ids, overriding ``seed``.

    Returns
    -------
    NCScenario
        Avalanche's class-incremental scenario: ``train_stream``, ``test_stream``,
        ``classes_order``, ``n_classes``; it works with every Avalanche strategy, ICaRL included.
    """
    if name not in DATASETS:
        raise ValueError(f"name must be one of {DATASETS}, got {name!r}")
    dataset = load_dataset(name, data)
    k = dataset.n_classes
    if isinstance(n_experiences, bool) or not isinstance(n_experiences, int) or not 1 <= n_experiences <= k:
        raise ValueError(f"n_experiences must be an integer in 1..{k} for {name}, got {n_experiences!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    if class_order is None:
        class_order = torch.randperm(k, generator=torch.Generator().manual_seed(seed)).tolist()
    elif sorted(int(c) for c in class_order) != list(range(k)):
        raise ValueError(f"class_order must be a permutation of 0..{k - 1}, got {class_order!r}")
    base, extra = divmod(k, n_experiences)
    per_exp = {i: base + (1 if i < extra else 0) for i in range(n_experiences)}
    train = tensor_dataset(dataset.x_train, dataset.y_train, task_labels=0)
    test = tensor_dataset(dataset.x_test, dataset.y_test, task_labels=0)
    return nc_benchmark(
        train,
        test,
        n_experiences=n_experiences,
        task_labels=bool(task_labels),
        shuffle=False,
        fixed_class_order=[int(c) for c in class_order],
        per_exp_classes=per_exp,
        class_ids_from_zero_in_each_exp=False,
    )
