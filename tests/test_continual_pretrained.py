"""continual/ on a frozen backbone: benchmarks of features, KRRStrategy on them against joint ridge, NCMStrategy.

A cheap seeded map (RandomFCNN) on the embedded digits stands in for the
pretrained backbone: the benchmark treats every FeatureMap alike, and the
EfficientNet map itself is tested in tests/test_pretrained.py.
"""

from __future__ import annotations

import shutil

import pytest
import torch

pytest.importorskip("avalanche")

import distillmem as dm  # noqa: E402
from continual import KRRStrategy, NCMStrategy, split_benchmark  # noqa: E402
from distillmem.feature_cache import cache_path as cache_file  # noqa: E402
from continual.data import ExperienceData, read_experience  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:No loggers specified:UserWarning"),
]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


@pytest.fixture(scope="module")
def fmap() -> dm.features.FeatureMap:
    return dm.features.RandomFCNN(64, seed=3)


@pytest.fixture(scope="module")
def images():
    return split_benchmark("digits", n_experiences=5, seed=1)


@pytest.fixture(scope="module")
def features(fmap):
    return split_benchmark("digits", n_experiences=5, seed=1, feature_map=fmap)


@pytest.fixture(scope="module")
def feature_data(features):
    return [read_experience(e.dataset) for e in features.train_stream]


def test_feature_benchmark_holds_phi_of_the_images_in_the_same_experiences(images, features, fmap):
    assert features.classes_order == images.classes_order
    for stream in ("train_stream", "test_stream"):
        for img_exp, feat_exp in zip(getattr(images, stream), getattr(features, stream)):
            assert feat_exp.classes_in_this_experience == img_exp.classes_in_this_experience
            img, feat = read_experience(img_exp.dataset), read_experience(feat_exp.dataset)
            assert feat.x.dtype == torch.float32 and feat.x.shape == (len(img.y), 64)
            assert torch.equal(feat.y, img.y)
            expected = fmap(img.x.reshape(len(img.y), -1).double())
            assert torch.allclose(feat.x.double(), expected, rtol=1e-6, atol=1e-6)


def test_krr_strategy_on_features_equals_joint_ridge_after_every_experience(features, feature_data):
    strategy = KRRStrategy(feature_map=dm.features.Identity(64), reg=0.5, evaluator=None)
    for i, experience in enumerate(features.train_stream):
        strategy.train(experience)  # through Avalanche: reads the experience, absorbs it
        x = torch.cat([d.x for d in feature_data[: i + 1]]).double()
        y = torch.cat([d.y for d in feature_data[: i + 1]])
        joint = dm.KRR(dm.features.Identity(), reg=0.5, n_classes=10).fit(x, y)
        assert rel_err(strategy.model.weights, joint.weights_) < 1e-10
        test = torch.cat([read_experience(e.dataset).x for e in features.test_stream]).double()
        assert torch.equal(strategy.model(test).argmax(dim=1), joint.predict(test))


def test_krr_on_features_matches_krr_with_the_map_on_the_images(images, features, fmap, feature_data):
    """The benchmark of features is the image benchmark seen through the map, up to the float32 storage."""
    on_features = KRRStrategy(feature_map=dm.features.Identity(64), reg=0.5, n_classes=10, evaluator=None)
    on_images = KRRStrategy(feature_map=fmap, reg=0.5, n_classes=10, evaluator=None)
    for img_exp, feat in zip(images.train_stream, feature_data):
        on_features.absorb(feat)
        on_images.absorb(read_experience(img_exp.dataset))
    assert rel_err(on_features.model.weights, on_images.model.weights) < 1e-4


def test_ncm_means_are_the_class_means_of_all_data_seen_and_predict_the_nearest(features, feature_data):
    for metric in ("cosine", "euclidean"):
        ncm = NCMStrategy(feature_map=dm.features.Identity(64), metric=metric, evaluator=None)
        for i, experience in enumerate(features.train_stream):
            ncm.train(experience)
            x = torch.cat([d.x for d in feature_data[: i + 1]]).double()
            y = torch.cat([d.y for d in feature_data[: i + 1]])
            seen = sorted(set(y.tolist()))
            means = torch.stack([x[y == c].mean(dim=0) for c in seen])
            assert torch.allclose(ncm.model.means[seen], means, rtol=1e-12, atol=1e-12)
            assert torch.equal(ncm.counts_[seen], torch.bincount(y)[seen])
            probe = torch.cat([read_experience(e.dataset).x for e in features.test_stream]).double()
            if metric == "cosine":
                nearest = (torch.nn.functional.normalize(probe, dim=1) @ torch.nn.functional.normalize(means, dim=1).T).argmax(1)
            else:
                nearest = torch.cdist(probe, means).argmin(dim=1)
            predicted = ncm.model(probe).argmax(dim=1)
            assert torch.equal(predicted, torch.tensor(seen)[nearest])  # classes not seen are never predicted
        assert ncm.memory_nbytes == 10 * 64 * 8 + 10 * 8


def test_ncm_is_independent_of_the_order_of_experiences(feature_data):
    forward = NCMStrategy(feature_map=dm.features.Identity(64), n_classes=10, evaluator=None)
    backward = NCMStrategy(feature_map=dm.features.Identity(64), n_classes=10, evaluator=None)
    for data in feature_data:
        forward.absorb(data)
    for data in reversed(feature_data):
        backward.absorb(data)
    assert torch.allclose(forward.model.means, backward.model.means, rtol=1e-12, atol=1e-12)


def test_ncm_refuses_bad_input_and_keeps_its_state(feature_data):
    with pytest.raises(ValueError, match="metric must be one of"):
        NCMStrategy(feature_map=dm.features.Identity(), metric="manhattan")
    with pytest.raises(TypeError, match="feature_map must be a distillmem FeatureMap"):
        NCMStrategy(feature_map=torch.nn.Identity())
    ncm = NCMStrategy(feature_map=dm.features.Identity(64), n_classes=10, evaluator=None)
    with pytest.raises(RuntimeError, match="no class means yet"):
        ncm.model(feature_data[0].x)
    ncm.absorb(feature_data[0])
    sums = ncm.sums_.clone()
    wide = ExperienceData(torch.zeros(4, 65), torch.tensor([0, 1, 0, 1]), 0)
    with pytest.raises(ValueError, match="does not fit"):
        ncm.absorb(wide)
    beyond = ExperienceData(feature_data[1].x, torch.full_like(feature_data[1].y, 10), 0)
    with pytest.raises(ValueError, match="outside n_classes=10"):
        ncm.absorb(beyond)
    assert torch.equal(ncm.sums_, sums)


def counting(fmap: dm.features.FeatureMap) -> list[int]:
    """Rows passed to ``fmap`` from now on, one entry per call."""
    calls: list[int] = []
    forward = fmap.forward
    fmap.forward = lambda x: (calls.append(len(x)), forward(x))[1]
    return calls


def test_feature_cache_computes_once_then_reads(tmp_path, features):
    fmap = dm.features.RandomFCNN(64, seed=3)  # the fixture's map, rebuilt: the same spec, so the same files
    calls = counting(fmap)
    first = split_benchmark("digits", n_experiences=5, seed=1, feature_map=fmap, feature_cache=tmp_path / "cache")
    assert sum(calls) == 1437 + 360
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert files == sorted(cache_file(tmp_path / "cache", "digits", split, fmap).name for split in ("train", "test"))
    again = split_benchmark("digits", n_experiences=5, seed=1, feature_map=fmap, feature_cache=tmp_path / "cache")
    assert sum(calls) == 1437 + 360  # read back, not recomputed
    for bench in (first, again):
        for cached, direct in zip(bench.train_stream, features.train_stream):
            assert torch.equal(read_experience(cached.dataset).x, read_experience(direct.dataset).x)


def test_feature_cache_of_other_images_or_another_map_is_refused(tmp_path):
    fmap, other = dm.features.RandomFCNN(64, seed=3), dm.features.RandomFCNN(64, seed=4)
    split_benchmark("digits", feature_map=fmap, feature_cache=tmp_path)
    train, test = (cache_file(tmp_path, "digits", split, fmap) for split in ("train", "test"))
    shutil.copy(train, test)  # the test split's file now holds the training images' features
    with pytest.raises(ValueError, match="made from other inputs: the data differ"):
        split_benchmark("digits", feature_map=fmap, feature_cache=tmp_path)
    for split in ("train", "test"):
        shutil.copy(train, cache_file(tmp_path, "digits", split, other))
    with pytest.raises(ValueError, match="feature map differs.*seed: cached 3, given 4"):
        split_benchmark("digits", feature_map=other, feature_cache=tmp_path)
    assert dm.FeatureCache.load(cache_file(tmp_path, "digits", "test", other)).feature_map_spec == fmap.spec()


def test_feature_benchmark_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="feature_cache=.* without a feature_map"):
        split_benchmark("digits", feature_cache=tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="feature_cache=.*file.* is not a folder"):
        split_benchmark("digits", feature_map=dm.features.RandomFCNN(64, seed=0), feature_cache=tmp_path / "file")
    with pytest.raises(TypeError, match="feature_map must be a distillmem FeatureMap"):
        split_benchmark("digits", feature_map=torch.nn.Identity())
    with pytest.raises(ValueError, match="does not fit|expects inputs"):
        split_benchmark("digits", feature_map=dm.features.RandomFCNN(784, seed=0))
