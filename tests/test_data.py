"""Tests for distillmem.data: loaders, IDX reading, normalisation and splits."""

from __future__ import annotations

import gzip
import math
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from distillmem.data import (
    DATASETS,
    IDX_FILES,
    ImageDataset,
    dataset_files,
    load_dataset,
    normalize,
    read_idx,
    train_val_split,
    unnormalize,
)

_IDX_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(">i2"): 0x0B,
    np.dtype(">i4"): 0x0C,
    np.dtype(">f4"): 0x0D,
    np.dtype(">f8"): 0x0E,
}


def write_idx(path: Path, array: np.ndarray, *, compress: bool = False) -> Path:
    """Write ``array`` as an IDX file (big-endian, as the format requires)."""
    big = array.astype(array.dtype.newbyteorder(">"))
    header = bytes([0, 0, _IDX_CODES[big.dtype], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + big.tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def synthetic(n: int, shape: tuple[int, ...], n_classes: int = 10, seed: int = 0):
    """Random uint8 images of ``shape`` per item and labels covering the classes."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    y = (np.arange(n) % n_classes).astype(np.uint8 if n_classes <= 256 else np.int64)
    return x, y


def write_npz(path: Path, n_train: int = 12, n_test: int = 5, shape=(28, 28), n_classes=10, **override):
    x_train, y_train = synthetic(n_train, shape, n_classes, seed=1)
    x_test, y_test = synthetic(n_test, shape, n_classes, seed=2)
    arrays = dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


def write_idx_folder(folder: Path, n_train: int = 9, n_test: int = 4) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    x_train, y_train = synthetic(n_train, (28, 28), seed=3)
    x_test, y_test = synthetic(n_test, (28, 28), seed=4)
    arrays = [x_train, y_train, x_test, y_test]
    # Mix compressed and plain files, as folders found in the wild do.
    for i, (stem, array) in enumerate(zip(IDX_FILES, arrays, strict=True)):
        compress = i % 2 == 0
        write_idx(folder / (stem + ".gz" if compress else stem), array, compress=compress)
    return dict(zip(("x_train", "y_train", "x_test", "y_test"), arrays, strict=True))


# --- digits ---------------------------------------------------------------------------


def test_digits_shapes_and_statistics():
    ds = load_dataset("digits")
    assert isinstance(ds, ImageDataset)
    assert ds.name == "digits"
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_test.shape == (360, 1, 8, 8)
    assert ds.x_train.dtype == torch.float32 and ds.x_test.dtype == torch.float32
    assert ds.y_train.shape == (1437,) and ds.y_train.dtype == torch.int64
    assert ds.y_test.shape == (360,) and ds.y_test.dtype == torch.int64
    assert ds.n_classes == 10 and ds.image_shape == (1, 8, 8) and ds.n_features == 64
    assert set(ds.y_train.tolist()) == set(range(10))
    assert len(ds.mean) == len(ds.std) == 1 and 0 < ds.mean[0] < 1 and 0 < ds.std[0] < 1
    assert abs(ds.x_train.mean().item()) < 1e-5
    assert ds.x_train.std(correction=0).item() == pytest.approx(1.0, abs=1e-5)
    # Back in pixel units the images are the original integer counts 0..16.
    pixels = unnormalize(ds.x_test, ds.mean, ds.std) * 16
    assert torch.allclose(pixels, pixels.round(), atol=1e-4)
    assert pixels.min() > -1e-4 and pixels.max() < 16 + 1e-4


def test_digits_is_deterministic_and_matches_sklearn():
    from sklearn.datasets import load_digits

    a, b = load_dataset(), load_dataset("digits")
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert a.mean == b.mean and a.std == b.std
    # Train and test partition the bundled images.
    bunch = load_digits()
    counts = np.bincount(bunch.target, minlength=10)
    loaded = np.bincount(torch.cat([a.y_train, a.y_test]).numpy(), minlength=10)
    assert np.array_equal(counts, loaded)


def test_digits_rejects_root(tmp_path):
    with pytest.raises(ValueError, match="digits.*no root"):
        load_dataset("digits", tmp_path)


# --- npz --------------------------------------------------------------------------------


def test_npz_grey_uses_mnist_constants(tmp_path):
    path = tmp_path / "mnist.npz"
    raw = write_npz(path)
    ds = load_dataset("mnist", path)
    assert ds.mean == (0.1307,) and ds.std == (0.3081,)
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (5, 1, 28, 28)
    expected = (torch.from_numpy(raw["x_train"]).float()[:, None] / 255 - 0.1307) / 0.3081
    assert torch.allclose(ds.x_train, expected, atol=1e-6)
    assert torch.equal(ds.y_test, torch.from_numpy(raw["y_test"]).long())
    # unnormalize inverts normalize, in image and in flattened form.
    unit = torch.from_numpy(raw["x_test"]).float()[:, None] / 255
    assert torch.allclose(unnormalize(ds.x_test, ds.mean, ds.std), unit, atol=1e-6)
    flat = unnormalize(ds.x_test.flatten(1), ds.mean, ds.std)
    assert flat.shape == (5, 784) and torch.allclose(flat, unit.flatten(1), atol=1e-6)


def test_npz_fashion_mnist_estimates_statistics(tmp_path):
    path = tmp_path / "fashion.npz"
    raw = write_npz(path)
    ds = load_dataset("fashion-mnist", path)
    unit = raw["x_train"].astype(np.float64) / 255
    assert ds.mean[0] == pytest.approx(unit.mean(), abs=1e-6)
    assert ds.std[0] == pytest.approx(unit.std(), abs=1e-6)
    assert abs(ds.x_train.mean().item()) < 1e-5
    assert ds.x_train.std(correction=0).item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(("name", "n_classes"), [("cifar10", 10), ("cifar100", 100)])
def test_npz_cifar_layouts_and_constants(tmp_path, name, n_classes):
    hwc = tmp_path / "hwc.npz"
    raw = write_npz(hwc, shape=(32, 32, 3), n_classes=n_classes)
    ds = load_dataset(name, hwc)
    assert ds.n_classes == n_classes and ds.image_shape == (3, 32, 32) and ds.n_features == 3072
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2023, 0.1994, 0.2010)
    # Channel c of image i at (h, w) comes from raw[i, h, w, c].
    unit = unnormalize(ds.x_train, ds.mean, ds.std)
    assert unit[3, 2, 5, 7].item() == pytest.approx(raw["x_train"][3, 5, 7, 2] / 255, abs=1e-6)
    assert torch.allclose(unit, torch.from_numpy(raw["x_train"]).permute(0, 3, 1, 2) / 255.0, atol=1e-6)
    # The same images stored channel-first load identically.
    chw = tmp_path / "chw.npz"
    np.savez(
        chw,
        **{k: (v.transpose(0, 3, 1, 2) if k.startswith("x") else v) for k, v in raw.items()},
    )
    again = load_dataset(name, str(chw))
    assert torch.equal(again.x_train, ds.x_train) and torch.equal(again.x_test, ds.x_test)


def test_normalize_leaves_input_untouched_and_checks_channels():
    x = torch.rand(2, 3, 4, 4) * 255
    before = x.clone()
    out = normalize(x, (0.1, 0.2, 0.3), (0.5, 0.5, 0.5))
    assert torch.equal(x, before) and out.dtype == torch.float32
    assert torch.allclose(out[:, 1], (before[:, 1] / 255 - 0.2) / 0.5)
    with pytest.raises(ValueError, match="mean needs 3 values"):
        normalize(x, (0.1,), (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="std must be positive"):
        normalize(x, 0.1, (0.5, 0.0, 0.5))
    with pytest.raises(ValueError, match=r"\(n, C, H, W\)"):
        normalize(x[0], 0.1, 0.5)
    with pytest.raises(ValueError, match="split 10 features into 3 channels"):
        unnormalize(torch.zeros(2, 10), (0.1, 0.2, 0.3), (1.0, 1.0, 1.0))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"y_test": None}, "lacks arrays y_test"),
        ({"y_train": np.full(12, 10, dtype=np.uint8)}, r"y_train has labels in \[10, 10\], expected \[0, 10\)"),
        ({"y_train": np.arange(11, dtype=np.uint8) % 10}, "x_train has 12 images but y_train has 11 labels"),
        ({"y_test": np.zeros(5, dtype=np.float32)}, "y_test must be a 1-D integer array"),
        ({"x_train": np.zeros((12, 28, 28), dtype=np.float32)}, "x_train must hold uint8"),
        ({"x_test": np.zeros((5, 32, 32, 3), dtype=np.uint8)}, r"x_test has shape \(5, 32, 32, 3\), expected"),
    ],
)
def test_npz_rejects_bad_content(tmp_path, override, message):
    path = tmp_path / "bad.npz"
    write_npz(path, **override)
    with pytest.raises(ValueError, match=message):
        load_dataset("mnist", path)


def test_npz_rejects_pickled_objects_and_other_files(tmp_path):
    path = tmp_path / "objects.npz"
    write_npz(path, y_train=np.array([object()] * 12))
    with pytest.raises(ValueError):
        load_dataset("mnist", path)
    other = tmp_path / "data.txt"
    other.write_text("not data")
    with pytest.raises(ValueError, match="not a .npz archive"):
        load_dataset("mnist", other)


def _flip_byte(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0xFF
    path.write_bytes(bytes(data))


def _npz_files(tmp_path):
    """Broken .npz files, by name, each with the phrase its error must contain."""
    files = {}
    text = tmp_path / "text.npz"
    text.write_text("x_train,y_train\n1,2\n")
    files["text"] = (text, "not a .npz archive")
    single = tmp_path / "single.npz"
    with single.open("wb") as handle:
        np.save(handle, np.zeros((3, 28, 28), dtype=np.uint8))
    files["single .npy"] = (single, "not a .npz archive")
    truncated = tmp_path / "truncated.npz"
    write_npz(truncated)
    truncated.write_bytes(truncated.read_bytes()[:3000])
    files["truncated"] = (truncated, "not a .npz archive")
    crc = tmp_path / "crc.npz"
    write_npz(crc)
    _flip_byte(crc, 200)  # inside x_train's pixels: the zip's CRC check fails
    files["bad CRC"] = (crc, "corrupt or truncated .npz archive")
    deflated = tmp_path / "deflated.npz"
    arrays = write_npz(deflated)
    np.savez_compressed(deflated, **arrays)
    _flip_byte(deflated, 2000)  # inside the compressed pixels of x_train
    files["bad deflate stream"] = (deflated, "corrupt or truncated .npz archive")
    header = tmp_path / "header.npz"
    write_npz(header)
    _flip_byte(header, header.read_bytes().index(b"fortran_order") + 3)
    files["bad .npy header"] = (header, "x_train is not a plain numeric array")
    objects = tmp_path / "objects.npz"
    write_npz(objects, y_train=np.array([object()] * 12))
    files["object array"] = (objects, "y_train is not a plain numeric array")
    raw = tmp_path / "raw.npz"
    with zipfile.ZipFile(raw, "w") as archive:
        for key in ("x_train", "y_train", "x_test", "y_test"):
            archive.writestr(key, b"\0" * 64)  # no .npy format
    files["raw members"] = (raw, "x_train is not stored as a .npy array")
    return files


NPZ_CASES = ["text", "single .npy", "truncated", "bad CRC", "bad deflate stream", "bad .npy header", "object array", "raw members"]


@pytest.mark.parametrize("case", NPZ_CASES)
def test_broken_npz_is_a_clear_value_error(tmp_path, case):
    path, phrase = _npz_files(tmp_path)[case]
    with pytest.raises(ValueError, match=phrase) as info:
        load_dataset("mnist", path)
    assert str(path) in str(info.value)
    assert "pickle" not in str(info.value).replace("allow_pickle=False", "")  # no advice to unpickle


def test_dataset_files_names_what_load_dataset_reads(tmp_path):
    npz = tmp_path / "mnist.npz"
    write_npz(npz)
    assert dataset_files("mnist", npz) == [npz]
    assert dataset_files("mnist", tmp_path / "absent.npz") == [tmp_path / "absent.npz"]
    folder = tmp_path / "idx"
    write_idx_folder(folder)
    assert {p.name for p in dataset_files("mnist", folder)} == {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte",
                                                                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte"}
    assert dataset_files("digits", None) == []
    assert dataset_files("cifar10", tmp_path) == []


# --- IDX --------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_round_trip(tmp_path, compress, dtype):
    array = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    if dtype == np.uint8:
        array = array + np.uint8(7)
    name = "data-idx3-ubyte.gz" if compress else "data-idx3-ubyte"
    back = read_idx(write_idx(tmp_path / name, array, compress=compress))
    assert back.dtype == np.dtype(dtype) and back.shape == (2, 3, 5)
    assert np.array_equal(back, array) and back.flags.writeable


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x00\x00", "too short for an IDX header"),
        (b"\x12\x34\x08\x01" + struct.pack(">I", 1) + b"\x00", "magic number starts with 0x1234"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "unknown IDX element type code 0x07"),
        (b"\x00\x00\x08\x00", "zero dimensions"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 2), "truncated IDX header"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 4) + b"\x01\x02", "IDX data truncated"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 1) + b"\x01\x02", "trailing bytes"),
        (b"\x1f\x8b" + b"garbage", "corrupt gzip"),
        (gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 64) + bytes(64))[:-12], "corrupt gzip"),
    ],
)
def test_read_idx_rejects_corrupt_files(tmp_path, payload, message):
    path = tmp_path / "broken"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match=message):
        read_idx(path)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "absent-idx1-ubyte")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_folder_loads(tmp_path, name):
    raw = write_idx_folder(tmp_path)
    ds = load_dataset(name, tmp_path)
    assert ds.x_train.shape == (9, 1, 28, 28) and ds.x_test.shape == (4, 1, 28, 28)
    assert torch.equal(ds.y_train, torch.from_numpy(raw["y_train"]).long())
    unit = unnormalize(ds.x_test, ds.mean, ds.std)
    assert torch.allclose(unit, torch.from_numpy(raw["x_test"])[:, None] / 255.0, atol=1e-6)


def test_idx_folder_missing_file(tmp_path):
    write_idx_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="missing t10k-labels-idx1-ubyte"):
        load_dataset("mnist", tmp_path)


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_torchvision_layout_raw_folder(tmp_path, name, folder):
    # Some files are .gz only, which torchvision itself would refuse without downloading.
    raw = write_idx_folder(tmp_path / folder / "raw")
    ds = load_dataset(name, tmp_path)
    assert ds.x_train.shape == (9, 1, 28, 28)
    assert torch.equal(ds.y_test, torch.from_numpy(raw["y_test"]).long())


def test_torchvision_cifar_root(tmp_path, monkeypatch):
    datasets = pytest.importorskip("torchvision.datasets")
    (tmp_path / "cifar-10-batches-py").mkdir()
    # The real class checks md5 sums, so an empty folder must fail cleanly.
    with pytest.raises(FileNotFoundError, match="torchvision could not load cifar10"):
        load_dataset("cifar10", tmp_path)
    raw = {train: synthetic(6 if train else 3, (32, 32, 3), seed=int(train)) for train in (True, False)}

    class FakeCIFAR10:
        # CIFAR10 keeps HWC uint8 images in an array and labels in a list.
        def __init__(self, root: str, train: bool, download: bool) -> None:
            assert root == str(tmp_path) and not download
            self.data, self.targets = raw[train][0], raw[train][1].tolist()

    monkeypatch.setattr(datasets, "CIFAR10", FakeCIFAR10)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.x_train.shape == (6, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert torch.equal(ds.y_train, torch.from_numpy(raw[True][1]).long())
    unit = unnormalize(ds.x_test, ds.mean, ds.std)
    assert torch.allclose(unit, torch.from_numpy(raw[False][0]).permute(0, 3, 1, 2) / 255.0, atol=1e-6)


# --- bad names and roots ----------------------------------------------------------------


def test_unknown_name_lists_datasets():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'") as info:
        load_dataset("svhn")
    assert all(name in str(info.value) for name in DATASETS)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "cifar100"])
def test_missing_root(name):
    with pytest.raises(ValueError, match=rf"{name} needs root: a \.npz file"):
        load_dataset(name)


@pytest.mark.parametrize("name", ["mnist", "cifar100"])
def test_absent_data_without_download(tmp_path, name):
    with pytest.raises(FileNotFoundError, match="download=True") as info:
        load_dataset(name, tmp_path / "nowhere")
    assert "does not exist" in str(info.value)
    with pytest.raises(FileNotFoundError, match="nothing usable"):
        load_dataset(name, tmp_path)
    with pytest.raises(FileNotFoundError, match="no such .npz file"):
        load_dataset(name, tmp_path / "absent.npz", download=True)


def test_image_dataset_validates_fields():
    x, y = torch.zeros(3, 1, 2, 2), torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ValueError, match="x_test has 3 images but y_test has 2 labels"):
        ImageDataset("toy", x, y, x, y[:2], (0.0,), (1.0,), 2)
    with pytest.raises(ValueError, match="mean and std need 1 values"):
        ImageDataset("toy", x, y, x, y, (0.0, 0.0), (1.0, 1.0), 2)


# --- train/validation split -------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 7, 10, 33, 101, 1000, 60000])
@pytest.mark.parametrize("val_fraction", [0.05, 0.1, 1 / 3, 0.5, 0.7, 0.95])
@pytest.mark.parametrize("seed", [0, 1, 1234])
def test_split_matches_random_split(n, val_fraction, seed):
    expected_lengths = [math.floor(n * f) for f in (1 - val_fraction, val_fraction)]
    remainder = n - sum(expected_lengths)
    expected_lengths = [length + (i < remainder) for i, length in enumerate(expected_lengths)]
    if 0 in expected_lengths:
        with pytest.raises(ValueError, match="both parts must be non-empty"):
            train_val_split(n, val_fraction, seed)
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ref_train, ref_val = torch.utils.data.random_split(range(n), [1 - val_fraction, val_fraction])
    train, val = train_val_split(n, val_fraction, seed)
    assert train.dtype == torch.int64 and val.dtype == torch.int64
    assert train.tolist() == list(ref_train) and val.tolist() == list(ref_val)


def test_split_paper_sizes_and_global_rng_untouched():
    state = torch.get_rng_state()
    train, val = train_val_split(60000)
    assert torch.equal(state, torch.get_rng_state())
    assert (len(train), len(val)) == (57000, 3000)
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(60000))
    assert not torch.equal(train_val_split(100, seed=1)[1], train_val_split(100, seed=2)[1])


@pytest.mark.parametrize("val_fraction", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_split_rejects_bad_fraction(val_fraction):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        train_val_split(100, val_fraction)


@pytest.mark.parametrize("n", [0, 1, 2.5, True])
def test_split_rejects_bad_n(n):
    with pytest.raises(ValueError, match="integer >= 2"):
        train_val_split(n)
