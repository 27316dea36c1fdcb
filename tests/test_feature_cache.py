"""The feature cache: computed once in chunks, reused, and never used or replaced when it does not match."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import distillmem as dm
from distillmem.feature_cache import FeatureCache, cache_path, data_identity


def counting(fmap: dm.features.FeatureMap) -> list[int]:
    """Count the map's forward calls (rows per call) from now on."""
    calls: list[int] = []
    forward = fmap.forward

    def wrapped(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return forward(x)

    fmap.forward = wrapped
    return calls


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(23, 1, 4, 4, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def fcnn() -> dm.features.RandomFCNN:
    return dm.features.RandomFCNN(in_features=16, seed=0)


def test_computed_in_chunks_once_then_loaded_without_recomputing(tmp_path, images, fcnn):
    path = tmp_path / "train.dmf"
    calls = counting(fcnn)
    first = dm.cached_features(fcnn, images, path, chunk_size=5, progress=False, dataset="toy")
    assert calls == [5, 5, 5, 5, 3]
    flat = images.reshape(23, -1)
    torch.testing.assert_close(first, torch.cat([fcnn(flat[i : i + 5]) for i in range(0, 23, 5)]), rtol=0, atol=0)
    calls.clear()
    second = dm.cached_features(fcnn, images, path, chunk_size=7, progress=False)
    assert calls == []
    assert torch.equal(first, second)
    cache = FeatureCache.load(path)
    assert cache.dataset == "toy" and cache.feature_map_spec == fcnn.spec() and cache.compute_seconds > 0
    assert cache.data == data_identity(images) and cache.data["shape"] == [23, 1, 4, 4]


def test_numpy_and_memmap_inputs_hit_the_cache_of_the_same_bytes(tmp_path, images, fcnn):
    path = tmp_path / "train.dmf"
    expected = dm.cached_features(fcnn, images, path, progress=False)
    calls = counting(fcnn)
    np.save(tmp_path / "x.npy", images.numpy())
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert torch.equal(dm.cached_features(fcnn, images.numpy(), path, progress=False), expected)
    assert torch.equal(dm.cached_features(fcnn, mapped, path, progress=False), expected)
    assert calls == []


def test_changed_data_is_detected_and_replaced_only_on_refresh(tmp_path, images, fcnn):
    path = tmp_path / "train.dmf"
    dm.cached_features(fcnn, images, path, progress=False)
    changed = images.clone()
    changed[17, 0, 2, 3] += 1e-6
    with pytest.raises(ValueError, match="the data differ"):
        dm.cached_features(fcnn, changed, path, progress=False)
    with pytest.raises(ValueError, match="the data differ"):  # same bytes, other shape
        dm.cached_features(fcnn, images.reshape(23, 16), path, progress=False)
    with pytest.raises(ValueError, match="the data differ"):
        dm.cached_features(fcnn, images[:22], path, progress=False)
    renewed = dm.cached_features(fcnn, changed, path, progress=False, refresh=True)
    torch.testing.assert_close(renewed, fcnn(changed.reshape(23, -1)))
    calls = counting(fcnn)
    assert torch.equal(dm.cached_features(fcnn, changed, path, progress=False), renewed)
    assert calls == []


def test_changed_feature_map_is_detected(tmp_path, images, fcnn):
    path = tmp_path / "train.dmf"
    dm.cached_features(fcnn, images, path, progress=False)
    with pytest.raises(ValueError, match="seed: cached 0, given 1"):
        dm.cached_features(dm.features.RandomFCNN(in_features=16, seed=1), images, path, progress=False)
    with pytest.raises(ValueError, match="the feature map differs"):
        dm.cached_features(dm.features.Identity(), images, path, progress=False)


def test_pretrained_image_size_and_backbone_are_part_of_the_key(tmp_path):
    pytest.importorskip("timm", reason='needs the optional extra: pip install "distillmem[pretrained]"')
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    lite0 = dm.features.Pretrained("efficientnet-lite0", (1, 8, 8), image_size=32)
    path = tmp_path / "digits.dmf"
    features = dm.cached_features(lite0, x, path, chunk_size=2, progress=False)
    assert features.shape == (3, 1280)
    torch.testing.assert_close(features, lite0(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="image_size: cached 32, given 40"):
        dm.cached_features(dm.features.Pretrained("efficientnet-lite0", (1, 8, 8), image_size=40), x, path, progress=False)
    with pytest.raises(ValueError, match="backbone: cached 'efficientnet-lite0', given 'efficientnet-lite1'"):
        dm.cached_features(dm.features.Pretrained("efficientnet-lite1", (1, 8, 8), image_size=32), x, path, progress=False)


def test_cache_path_names_a_backbone_by_name_and_size_and_other_maps_by_their_spec(tmp_path, fcnn):
    pytest.importorskip("timm", reason='needs the optional extra: pip install "distillmem[pretrained]"')
    lite0 = dm.features.Pretrained("efficientnet-lite0", (3, 32, 32), image_size=160)
    assert cache_path(tmp_path, "cifar10", "train", lite0) == tmp_path / "cifar10-train-efficientnet-lite0-160.dmf"
    name = cache_path(tmp_path, "digits", "test", fcnn).name
    assert name.startswith(f"digits-test-{fcnn.name}-") and name.endswith(".dmf")
    # Another spec of the same kind of map gets another file.
    assert cache_path(tmp_path, "digits", "test", dm.features.from_spec({**fcnn.spec(), "seed": 99})).name != name


def test_corrupt_file_is_refused_and_kept_even_on_refresh(tmp_path, images, fcnn):
    path = tmp_path / "train.dmf"
    dm.cached_features(fcnn, images, path, progress=False)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # inside the feature bytes
    path.write_bytes(bytes(data))
    for refresh in (False, True):
        with pytest.raises(ValueError, match="corrupt"):
            dm.cached_features(fcnn, images, path, progress=False, refresh=refresh)
    assert path.read_bytes() == bytes(data)


def test_foreign_file_is_never_replaced(tmp_path, images, fcnn):
    notes = tmp_path / "notes.txt"
    notes.write_text("a user's file")
    saved = tmp_path / "set.dm"
    dm.distill(images.reshape(23, -1).double(), torch.arange(23) % 2, ipc=1, feature_map=fcnn, reg=1e-3).save(saved)
    before = saved.read_bytes()
    for path in (notes, saved):
        with pytest.raises(ValueError, match="not a|but not"):
            dm.cached_features(fcnn, images, path, progress=False, refresh=True)
    assert notes.read_text() == "a user's file" and saved.read_bytes() == before


def test_bad_arguments_are_named(tmp_path, images, fcnn):
    with pytest.raises(ValueError, match="chunk_size"):
        dm.cached_features(fcnn, images, tmp_path / "a.dmf", chunk_size=0)
    with pytest.raises(TypeError, match="feature_map"):
        dm.cached_features(torch.nn.Identity(), images, tmp_path / "a.dmf")
    with pytest.raises(ValueError, match="NaN"):
        dm.cached_features(fcnn, torch.full((2, 16), float("nan")), tmp_path / "a.dmf", progress=False)
    assert not (tmp_path / "a.dmf").exists()
