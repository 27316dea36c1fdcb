"""KRR and distillation on memory-mapped .npy files: equal results, and clear errors for bad files."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from distillmem import KRR, KRRDistiller, MomentMemory
from distillmem.features import Identity, RandomFCNN

D = 16


def memmap(tmp_path, name, array):
    path = tmp_path / f"{name}.npy"
    np.save(path, array)
    return np.load(path, mmap_mode="r")


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    y = np.arange(300) % 4
    x = (rng.normal(size=(4, D))[y] + rng.normal(size=(300, D))).astype(np.float32)
    return x, y


def test_memmap_fit_equals_in_memory_fit(tmp_path, data):
    x, y = data
    xm, ym = memmap(tmp_path, "x", x), memmap(tmp_path, "y", y)
    fmap = RandomFCNN(D, seed=0)
    in_memory = KRR(fmap, reg=1.0, solver="primal", chunk_size=64).fit(torch.from_numpy(x), torch.from_numpy(y))
    mapped = KRR(fmap, reg=1.0, solver="primal", chunk_size=64).fit(xm, ym)
    assert torch.allclose(mapped.weights_, in_memory.weights_, rtol=0, atol=1e-12)
    batches = ((xm[i : i + 50], ym[i : i + 50]) for i in range(0, 300, 50))
    streamed = KRR(fmap, reg=1.0, n_classes=4).fit(batches)
    # Other chunk boundaries change the float32 feature rounding only.
    assert torch.allclose(streamed.weights_, in_memory.weights_, rtol=1e-5, atol=1e-7)
    distiller = KRRDistiller(ipc=3).fit(None, None, teacher=mapped)
    assert distiller.recovery_error_ < 1e-8


@pytest.mark.parametrize("dtype, computed_as", [(np.uint8, np.float32), (np.int32, np.float64)])
def test_integer_memmap_is_read_in_an_exact_float_dtype(tmp_path, dtype, computed_as):
    # uint8 pixels are exact in float32, so the features run in float32 like float32 data would.
    rng = np.random.default_rng(1)
    y = np.arange(200) % 4
    x = rng.integers(0, 256, size=(200, D)).astype(dtype)
    fmap = RandomFCNN(D, seed=0)
    mapped = KRR(fmap, reg=1.0, solver="primal", chunk_size=64).fit(memmap(tmp_path, "ints", x), y)
    reference = KRR(fmap, reg=1.0, solver="primal", chunk_size=64).fit(torch.from_numpy(x.astype(computed_as)), torch.from_numpy(y))
    assert torch.equal(mapped.weights_, reference.weights_)


def test_reading_a_read_only_memmap_releases_its_pages(tmp_path):
    # 8 MB of float32 rows: once read, the mapping's pages must not stay in this process's RSS.
    x = np.random.default_rng(2).standard_normal((5000, 400)).astype(np.float32)
    path = tmp_path / "big.npy"
    np.save(path, x)
    xm = np.load(path, mmap_mode="r")
    KRR(Identity(), reg=1.0, solver="primal", chunk_size=512).fit(xm, np.arange(5000) % 4)
    assert _mapped_rss_bytes(path) < 0.2 * path.stat().st_size


def _mapped_rss_bytes(path) -> int:
    """Resident bytes of this process's mappings of ``path`` (from /proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    return total


@pytest.mark.parametrize("solver", ["primal", "svd"])
def test_one_dimensional_memmap_is_rejected(tmp_path, solver):
    xm = memmap(tmp_path, "flat", np.zeros(300 * D, dtype=np.float32))
    with pytest.raises(ValueError, match="1-D shape"):
        KRR(RandomFCNN(D), reg=1.0, solver=solver).fit(xm, np.arange(300) % 4)


@pytest.mark.parametrize("solver", ["primal", "svd"])
def test_memmap_of_the_wrong_width_is_rejected(tmp_path, data, solver):
    x, y = data
    xm = memmap(tmp_path, "narrow", x[:, :-1])
    with pytest.raises(ValueError, match=rf"expects inputs of shape \(n, {D}\), found \(\d+, {D - 1}\)"):
        KRR(RandomFCNN(D), reg=1.0, solver=solver, chunk_size=64).fit(xm, y)
    with pytest.raises(ValueError, match=rf"\(n, {D}\)"):
        KRR(RandomFCNN(D), reg=1.0, n_classes=4).fit([(xm[:100], y[:100])])


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((50, D), dtype=np.complex64),
        np.full((50, D), "a"),
        np.zeros((50, D), dtype=[("a", np.float32)]),
    ],
    ids=["complex", "string", "structured"],
)
def test_memmap_of_a_non_real_dtype_is_rejected(tmp_path, array):
    xm = memmap(tmp_path, "bad", array)
    with pytest.raises(ValueError, match=f"must hold real numbers .* found dtype {re.escape(str(array.dtype))}"):
        KRR(RandomFCNN(D), reg=1.0).fit(xm, np.arange(50) % 4)
    with pytest.raises(ValueError, match="must hold real numbers"):
        KRR(RandomFCNN(D), reg=1.0, n_classes=4).fit([(xm, np.arange(50) % 4)])


def test_complex_tensor_is_rejected():
    with pytest.raises(ValueError, match="complex"):
        KRR(RandomFCNN(D), reg=1.0).fit(torch.zeros(20, D, dtype=torch.complex128), torch.arange(20) % 4)


def test_label_file_of_the_wrong_length_is_rejected(tmp_path, data):
    x, y = data
    with pytest.raises(ValueError, match="different numbers of samples: 300 != 299"):
        KRR(RandomFCNN(D), reg=1.0).fit(memmap(tmp_path, "x", x), memmap(tmp_path, "y", y[:-1]))


# -- a NaN met while streaming is reported at its row in the whole data, not in its chunk ----------------------


def _with_nan(x: np.ndarray, row: int) -> np.ndarray:
    x = x.copy()
    x[row, 5] = np.nan
    return x


def test_nan_in_a_later_batch_names_its_global_row(data):
    x, y = _with_nan(*data[:1], 170), data[1]
    batches = [(x[i : i + 100], y[i : i + 100]) for i in range(0, 300, 100)]  # row 170 is row 70 of batch 1
    with pytest.raises(ValueError, match=r"batch 1 contains NaN or Inf \(first at row 170\)"):
        KRR(RandomFCNN(D), reg=1.0, n_classes=4).fit(batches)
    with pytest.raises(ValueError, match=r"first at row 170\)"):
        MomentMemory(RandomFCNN(D), n_classes=4).update(iter(batches))


@pytest.mark.parametrize("solver", ["primal", "svd"])
def test_nan_in_a_later_memmap_chunk_names_its_global_row(tmp_path, data, solver):
    x, y = data
    xm = memmap(tmp_path, "nan", _with_nan(x, 150))  # row 150 is row 22 of the third 64-row chunk
    with pytest.raises(ValueError, match=r"NaN or Inf \(first at row 150\)"):
        KRR(RandomFCNN(D), reg=1.0, solver=solver, chunk_size=64).fit(xm, y)
    with pytest.raises(ValueError, match=r"NaN or Inf \(first at row 150\)"):
        MomentMemory(RandomFCNN(D), n_classes=4, chunk_size=64).update(xm, y)
    model = KRR(RandomFCNN(D), reg=1.0, chunk_size=64).fit(x, y)
    with pytest.raises(ValueError, match=r"NaN or Inf \(first at row 150\)"):
        model.predict(xm)
