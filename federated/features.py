"""Pretrained backbones in the federated app: the heads live on a frozen backbone's pooled features.

With ``feature-map`` naming a backbone of ``distillmem.features.Pretrained``
(``PRETRAINED``), every client runs the frozen backbone on the images of its
own partition, at ``image-size`` pixels, and from then on holds feature rows
(n, p) instead of pixels: the heads use ``Identity`` on them, so every upload
mode works unchanged. The server reads the features of the whole training and
test splits (for the centralized reference, lambda selection and evaluation).

``feature-cache`` names a folder of the engine's feature cache
(``distillmem.feature_cache``): the features of a whole split are computed
once there, keyed by the dataset and the backbone, and every process that
asks again (a simulation's clients and server, a second run) reads them; a
client with no cache computes the features of its partition only.
"""

from __future__ import annotations

import json
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from distillmem.feature_cache import cache_path, cached_features
from distillmem.features import FeatureMap, Pretrained
from distillmem.features.pretrained import BACKBONES

from .task import Arrays, Config, load_arrays, load_images, spec_json

#: Backbone names the ``feature-map`` key accepts.
PRETRAINED: tuple[str, ...] = tuple(BACKBONES)
#: Images per forward pass of the backbone.
CHUNK = 256

# One computation of a split's features at a time in this process: a simulation's
# clients run in threads and would otherwise all start the same cache entry.
_LOCK = threading.Lock()


def is_pretrained(cfg: Config) -> bool:
    """Whether the run's feature map is a pretrained backbone."""
    return cfg.feature_map in PRETRAINED


@lru_cache(maxsize=2)
def backbone(dataset: str, data_path: str, name: str, image_size: int) -> Pretrained:
    """The frozen backbone for the images of ``dataset`` (their shape, mean and std); one per process."""
    return Pretrained.for_dataset(load_images(dataset, data_path), name, image_size=image_size)


def upload_spec(cfg: Config, fmap: FeatureMap, data_path: str) -> str:
    """What a client sends as its feature map and the server compares: the heads' map, and with a
    pretrained backbone its spec too (name, image size, the weights' sha256, the input statistics)."""
    if not is_pretrained(cfg):
        return spec_json(fmap)
    stack = {"head": fmap.spec(), "backbone": backbone(cfg.dataset, data_path, cfg.feature_map, cfg.image_size).spec()}
    return json.dumps(stack, sort_keys=True)


def head_arrays(cfg: Config, data_path: str) -> Arrays:
    """The dataset as the heads see it: flattened images, or a backbone's features x_train (n, p), x_test (m, p) float32."""
    data = load_arrays(cfg.dataset, data_path)
    if not is_pretrained(cfg):
        return data
    return Arrays(split_features(cfg, data_path, "train"), data.y_train, split_features(cfg, data_path, "test"),
                  data.y_test, data.n_classes)


def partition_features(cfg: Config, data_path: str, rows: np.ndarray) -> np.ndarray:
    """Features (len(rows), p) float32 of training ``rows``: from the cache when there is one, else computed for these rows only."""
    if cfg.feature_cache:
        return split_features(cfg, data_path, "train")[rows]
    images = load_images(cfg.dataset, data_path).x_train[torch.as_tensor(rows)]
    return _compute(backbone(cfg.dataset, data_path, cfg.feature_map, cfg.image_size), images)


def split_features(cfg: Config, data_path: str, split: str) -> np.ndarray:
    """Features (n, p) float32 of a whole split ("train" or "test"), read from or added to the cache when given."""
    with _LOCK:  # a second caller waits for the first one's result instead of computing it again
        return _split_features(cfg.dataset, data_path, cfg.feature_map, cfg.image_size, cfg.feature_cache, split)


@lru_cache(maxsize=4)
def _split_features(dataset: str, data_path: str, name: str, image_size: int, cache: str, split: str) -> np.ndarray:
    fmap = backbone(dataset, data_path, name, image_size)
    images = getattr(load_images(dataset, data_path), f"x_{split}")
    if not cache:
        return _compute(fmap, images)
    folder = Path(cache)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"feature-cache={cache!r}: is not a folder (the cache keeps one file per dataset, backbone and split)")
    folder.mkdir(parents=True, exist_ok=True)
    path = cache_path(folder, dataset, split, fmap)
    # A file there made from other data or another map raises, naming what differs; it is never overwritten.
    features = cached_features(fmap, images, path, chunk_size=CHUNK, dataset=f"{dataset} {split}")
    return features.numpy()


def _compute(fmap: Pretrained, images: torch.Tensor) -> np.ndarray:
    """The backbone on ``images`` (n, C, H, W), passed as rows (b, C*H*W) in chunks: (n, p) float32."""
    rows = images.reshape(images.shape[0], -1)
    return np.concatenate([fmap(rows[i : i + CHUNK]).numpy() for i in range(0, rows.shape[0], CHUNK)])
