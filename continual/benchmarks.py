"""Offline class- and task-incremental benchmarks from local files, through the engine's loaders.

With a ``feature_map`` the scenario holds phi(image) instead of the image: a frozen backbone runs once over the
dataset, not once per experience and strategy, and any learner (``KRRStrategy`` on ``Identity``, a linear head,
a nearest-class-mean head) trains on the same features.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.benchmarks.scenarios.deprecated.new_classes.nc_scenario import NCScenario
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as tensor_dataset

from distillmem.data import DATASETS, load_dataset
from distillmem.feature_cache import cache_path, cached_features
from distillmem.features import FeatureMap

#: Images per forward pass of a feature map.
_CHUNK = 500


def split_benchmark(
    name: str,
    data: str | os.PathLike[str] | None = None,
    *,
    n_experiences: int = 5,
    seed: int = 0,
    task_labels: bool = False,
    class_order: list[int] | None = None,
    feature_map: FeatureMap | None = None,
    feature_cache: str | os.PathLike[str] | None = None,
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
    feature_map : FeatureMap, optional
        A frozen map phi (e.g. ``distillmem.features.Pretrained("efficientnet-lite0")``): the items are then
        float32 feature vectors phi(x) of shape (p,) instead of images, computed once for the whole dataset.
        Learners take them with ``Identity(p)`` as their map (``KRRStrategy``, ``NCMStrategy``) or a head of
        input width p (Avalanche's strategies); the results equal those of the map on the images.
    feature_cache : path, optional
        A folder of ``distillmem.cached_features`` files, one per dataset, split and map (named by
        ``distillmem.feature_cache.cache_path``): the features are read from there when they were computed
        before and stored there otherwise. A file there made from other images or another map is refused with
        an error naming what differs, never overwritten.
        Only with ``feature_map``.

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
    if feature_map is not None and not isinstance(feature_map, FeatureMap):
        raise TypeError(f"feature_map must be a distillmem FeatureMap, got {type(feature_map).__name__}")
    if feature_cache is not None:
        if feature_map is None:
            raise ValueError(f"feature_cache={str(feature_cache)!r} is given without a feature_map: nothing to cache")
        if Path(feature_cache).exists() and not Path(feature_cache).is_dir():
            raise ValueError(f"feature_cache={str(feature_cache)!r} is not a folder (it keeps one file per split and map)")
    x_train, x_test = dataset.x_train, dataset.x_test
    if feature_map is not None:
        x_train, x_test = (_features(feature_map, x, name, split, feature_cache)
                           for split, x in (("train", x_train), ("test", x_test)))
    base, extra = divmod(k, n_experiences)
    per_exp = {i: base + (1 if i < extra else 0) for i in range(n_experiences)}
    train = tensor_dataset(x_train, dataset.y_train, task_labels=0)
    test = tensor_dataset(x_test, dataset.y_test, task_labels=0)
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



def _features(
    feature_map: FeatureMap, x: torch.Tensor, dataset: str, split: str, cache: str | os.PathLike[str] | None
) -> torch.Tensor:
    """phi(x) (n, p) float32, x (n, C, H, W); through the cache folder when given."""
    flat = x.reshape(x.shape[0], -1)
    try:
        feature_map.check_input(flat[:1])
    except ValueError as err:
        raise ValueError(f"feature_map {feature_map!r} does not fit the images of shape {tuple(x.shape[1:])}: {err}") from None
    if cache is None:
        with torch.inference_mode():
            return torch.cat([feature_map(flat[i : i + _CHUNK]) for i in range(0, len(flat), _CHUNK)]).to(torch.float32)
    Path(cache).mkdir(parents=True, exist_ok=True)
    path = cache_path(cache, dataset, split, feature_map)
    # The images as the loader gives them, (n, C, H, W): their shape is part of the cache's key.
    return cached_features(feature_map, x, path, chunk_size=_CHUNK, dataset=f"{dataset}-{split}").to(torch.float32)
