"""Image datasets: loading, per-channel normalisation and train/validation splits.

Every loader returns an :class:`ImageDataset` whose images are float32 tensors
of shape ``(n, C, H, W)``, normalised per channel. Only ``digits`` ships with
the toolkit (through scikit-learn); the other datasets are read from a local
``.npz`` file, a folder of MNIST-style IDX files, or a torchvision root.
"""

from __future__ import annotations

import gzip
import math
import numbers
import os
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100")

IDX_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
"""IDX file names looked for in a data folder, in x_train, y_train, x_test, y_test order.

Each may also carry a ``.gz`` suffix."""

NPZ_KEYS: tuple[str, ...] = ("x_train", "y_train", "x_test", "y_test")

_DIGITS_SEED = 0
_DIGITS_TEST_FRACTION = 0.2

_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"

Stats = float | Sequence[float]


@dataclass(frozen=True)
class _Spec:
    image_shape: tuple[int, int, int]
    n_classes: int
    # None: estimated from the training split when loading.
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None
    torchvision_class: str  # empty when torchvision does not provide the dataset
    torchvision_folder: str

    @property
    def reads_idx(self) -> bool:
        return self.torchvision_class in ("MNIST", "FashionMNIST")


# The paper's code normalises CIFAR-100 with the CIFAR-10 constants; keep that.
_CIFAR_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
_SPECS: dict[str, _Spec] = {
    "digits": _Spec((1, 8, 8), 10, None, "", ""),
    "mnist": _Spec((1, 28, 28), 10, ((0.1307,), (0.3081,)), "MNIST", "MNIST"),
    "fashion-mnist": _Spec((1, 28, 28), 10, None, "FashionMNIST", "FashionMNIST"),
    "cifar10": _Spec((3, 32, 32), 10, _CIFAR_STATS, "CIFAR10", "cifar-10-batches-py"),
    "cifar100": _Spec((3, 32, 32), 100, _CIFAR_STATS, "CIFAR100", "cifar-100-python"),
}


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors field-wise is ambiguous
class ImageDataset:
    """A labelled image dataset, normalised per channel.

    Attributes
    ----------
    name : str
        Dataset name, one of ``DATASETS`` for loaded datasets.
    x_train, x_test : torch.Tensor
        (n_train, C, H, W) and (n_test, C, H, W) float32 images,
        ``((pixel / scale) - mean[c]) / std[c]``.
    y_train, y_test : torch.Tensor
        (n_train,) and (n_test,) int64 labels in ``[0, n_classes)``.
    mean, std : tuple of float
        Per-channel statistics (length C) in the [0, 1] pixel scale.
    n_classes : int
        Number of classes.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    n_classes: int

    def __post_init__(self) -> None:
        if self.n_classes < 1:
            raise ValueError(f"{self.name}: n_classes must be positive, got {self.n_classes}")
        for split in ("train", "test"):
            x: torch.Tensor = getattr(self, f"x_{split}")
            y: torch.Tensor = getattr(self, f"y_{split}")
            if x.ndim != 4 or not x.is_floating_point():
                raise ValueError(
                    f"{self.name}: x_{split} must be a floating (n, C, H, W) tensor, "
                    f"got {x.dtype} of shape {tuple(x.shape)}"
                )
            if y.ndim != 1 or y.dtype != torch.int64:
                raise ValueError(
                    f"{self.name}: y_{split} must be an int64 (n,) tensor, "
                    f"got {y.dtype} of shape {tuple(y.shape)}"
                )
            if len(x) != len(y):
                raise ValueError(
                    f"{self.name}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels"
                )
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.n_classes):
                raise ValueError(
                    f"{self.name}: y_{split} has labels in [{int(y.min())}, {int(y.max())}], "
                    f"expected [0, {self.n_classes})"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"{self.name}: train images {tuple(self.x_train.shape[1:])} and test images "
                f"{tuple(self.x_test.shape[1:])} differ in shape"
            )
        n_channels = self.x_train.shape[1]
        if len(self.mean) != n_channels or len(self.std) != n_channels:
            raise ValueError(
                f"{self.name}: mean and std need {n_channels} values, "
                f"got {len(self.mean)} and {len(self.std)}"
            )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape (C, H, W) of one image."""
        c, h, w = self.x_train.shape[1:]
        return (c, h, w)

    @property
    def n_features(self) -> int:
        """Length C*H*W of a flattened image."""
        return math.prod(self.image_shape)


def load_dataset(
    name: str = "digits",
    root: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
) -> ImageDataset:
    """Load a dataset of ``DATASETS``, normalised per channel.

    Parameters
    ----------
    name
        ``"digits"`` (bundled with scikit-learn, 8x8 images, 1437 train / 360
        test) or one of ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``,
        ``"cifar100"``.
    root
        Must be None for ``digits``. Otherwise one of: a ``.npz`` file with
        uint8 ``x_train``, ``x_test`` of shape (n, H, W), (n, H, W, C) or
        (n, C, H, W) and integer ``y_train``, ``y_test``; a folder holding
        ``IDX_FILES`` (MNIST and Fashion-MNIST only, each optionally ``.gz``);
        or a torchvision root (``MNIST/``, ``FashionMNIST/``,
        ``cifar-10-batches-py/``, ``cifar-100-python/`` inside). IDX files in
        a torchvision root's ``raw`` folder are read directly, so ``.gz``-only
        copies load too.
    download
        Let torchvision download into ``root`` when the data is not there
        (needs network access).

    Returns
    -------
    ImageDataset
        Images as float32 (n, C, H, W), labels as int64 (n,).
    """
    spec = _spec(name)
    if name == "digits":
        if root is not None:
            raise ValueError(f"digits is bundled with scikit-learn and takes no root, got root={root!r}")
        return _load_digits()
    if root is None:
        raise ValueError(f"{name} needs root: {_accepted_roots(name)}")
    path = Path(root)
    if path.suffix == ".npz" and not path.exists():
        raise FileNotFoundError(f"{name}: no such .npz file: {path}")
    if path.is_file():
        if path.suffix != ".npz":
            raise ValueError(f"{name}: root {path} is a file but not a .npz archive; {_accepted_roots(name)}")
        arrays = _read_npz(path)
    elif spec.reads_idx and (idx_paths := _idx_paths(path, spec)) is not None:
        arrays = tuple(read_idx(p) for p in idx_paths)
    else:
        arrays = _read_torchvision(name, path, download)
    return _build(name, *arrays, scale=255.0)


def dataset_files(name: str, root: str | os.PathLike[str] | None) -> list[Path]:
    """The files ``load_dataset(name, root)`` reads: the ``.npz`` file or the IDX files.

    Empty for ``digits`` and for torchvision roots. Lets a caller refuse to
    write over its own input before loading anything.
    """
    if root is None or name == "digits":
        return []
    path = Path(root)
    if path.is_file() or path.suffix == ".npz":
        return [path]
    spec = _spec(name)
    return (_idx_paths(path, spec) or []) if spec.reads_idx else []


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not.

    Compression is detected from the content, so the file name does not matter.

    Parameters
    ----------
    path
        IDX file.

    Returns
    -------
    np.ndarray
        Array of the dimensions and element type stored in the file, e.g.
        (n, 28, 28) uint8 for MNIST images, in native byte order.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path}: corrupt gzip data ({err})") from err
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    if raw[:2] != b"\x00\x00":
        raise ValueError(
            f"{path}: not an IDX file, magic number starts with 0x{raw[:2].hex()} instead of 0x0000"
        )
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES)
        raise ValueError(f"{path}: unknown IDX element type code 0x{code:02x} (known: {known})")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares zero dimensions")
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise ValueError(
            f"{path}: truncated IDX header, {ndim} dimensions need {offset} bytes but the file has {len(raw)}"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = offset + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "has trailing bytes"
        raise ValueError(
            f"{path}: IDX data {problem}, dimensions {dims} of {dtype.name} need {expected} bytes "
            f"but the file has {len(raw)}"
        )
    # astype copies, which also makes the array writable (frombuffer over bytes is read-only).
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def normalize(
    x_uint8: np.ndarray | torch.Tensor,
    mean: Stats,
    std: Stats,
    *,
    scale: float = 255.0,
) -> torch.Tensor:
    """Scale pixels to [0, 1] and standardise each channel.

    Parameters
    ----------
    x_uint8
        (n, C, H, W) pixels, usually uint8 in ``[0, scale]``; never modified.
    mean, std
        Per-channel statistics in the [0, 1] scale: C values, or one for all.
    scale
        Value of a full-intensity pixel.

    Returns
    -------
    torch.Tensor
        (n, C, H, W) float32, ``((x / scale) - mean[c]) / std[c]``.
    """
    return _standardize_(_unit_float(x_uint8, scale), mean, std)


def unnormalize(x: torch.Tensor, mean: Stats, std: Stats) -> torch.Tensor:
    """Invert :func:`normalize`, back to the [0, 1] pixel scale.

    Parameters
    ----------
    x
        (n, C, H, W) images, or (n, C*H*W) flattened channel-major ones.
    mean, std
        The statistics used to normalise: C values, or one for all.

    Returns
    -------
    torch.Tensor
        ``x * std[c] + mean[c]`` with the shape and dtype of ``x``.
    """
    if x.ndim == 4:
        n_channels = x.shape[1]
    elif x.ndim == 2:
        n_channels = 1 if isinstance(mean, numbers.Real) else len(mean)
        if n_channels == 0 or x.shape[1] % n_channels:
            raise ValueError(
                f"cannot split {x.shape[1]} features into {n_channels} channels of equal size"
            )
    else:
        raise ValueError(f"x must have shape (n, C, H, W) or (n, C*H*W), got {tuple(x.shape)}")
    m = torch.tensor(_per_channel(mean, n_channels, "mean"), dtype=x.dtype, device=x.device)
    s = torch.tensor(_per_channel(std, n_channels, "std"), dtype=x.dtype, device=x.device)
    by_channel = x.reshape(len(x), n_channels, -1)
    return (by_channel * s[:, None] + m[:, None]).reshape(x.shape)


def train_val_split(
    n: int, val_fraction: float = 0.05, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n)`` at random into training and validation indices.

    Gives the same indices as ``torch.manual_seed(seed)`` followed by
    ``torch.utils.data.random_split(range(n), [1 - val_fraction, val_fraction])``
    (e.g. 57000/3000 for the 60000 MNIST training images), without touching
    torch's global random state.

    Parameters
    ----------
    n
        Number of items, at least 2.
    val_fraction
        Share of items for validation, strictly between 0 and 1.
    seed
        Seed of the permutation.

    Returns
    -------
    train_idx, val_idx : torch.Tensor
        (n_train,) and (n_val,) int64 indices, disjoint, together ``range(n)``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    if not 0 < val_fraction < 1:  # also rejects NaN
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction!r}")
    lengths = [math.floor(n * f) for f in (1 - val_fraction, val_fraction)]
    # random_split hands out the rounding remainder one by one, starting with the first split.
    for i in range(n - sum(lengths)):
        lengths[i % 2] += 1
    if 0 in lengths:
        raise ValueError(
            f"val_fraction={val_fraction} splits n={n} items into {lengths[0]} + {lengths[1]}; "
            "both parts must be non-empty"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    train_idx, val_idx = perm.split(lengths)
    return train_idx.clone(), val_idx.clone()


def _spec(name: str) -> _Spec:
    if name not in _SPECS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return _SPECS[name]


def _accepted_roots(name: str) -> str:
    spec = _SPECS[name]
    forms = [f"a .npz file with arrays {', '.join(NPZ_KEYS)}"]
    if spec.reads_idx:
        forms.append(f"a folder with the IDX files {', '.join(IDX_FILES)} (each optionally .gz)")
    forms.append(
        f"a torchvision root holding {spec.torchvision_folder}/ "
        "(download=True fetches it, needs network access)"
    )
    return "; or ".join(forms)


def _load_digits() -> ImageDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixels are integer counts 0..16 stored as float64.
    images = bunch.images.astype(np.uint8)
    n = len(images)
    n_test = math.ceil(_DIGITS_TEST_FRACTION * n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_DIGITS_SEED)).numpy()
    # Sorted, so both splits keep scikit-learn's order like the other datasets keep theirs.
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return _build(
        "digits", images[train], bunch.target[train], images[test], bunch.target[test], scale=16.0
    )


def _read_npz(path: Path) -> tuple[np.ndarray, ...]:
    # Checked first: numpy reads any other file as a single array or a pickle,
    # and its error for the latter advises loading with allow_pickle.
    with path.open("rb") as handle:
        if not zipfile.is_zipfile(handle):
            raise ValueError(
                f"{path} is not a .npz archive (not a complete zip file); it must hold arrays {', '.join(NPZ_KEYS)}"
            )
    try:
        with np.load(path, allow_pickle=False) as loaded:
            missing = [k for k in NPZ_KEYS if k not in loaded.files]
            if missing:
                raise ValueError(
                    f"{path} lacks arrays {', '.join(missing)}; it must hold {', '.join(NPZ_KEYS)} "
                    f"(found: {', '.join(loaded.files) or 'none'})"
                )
            return tuple(_npz_array(loaded, k, path) for k in NPZ_KEYS)
    except (zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise ValueError(f"{path} is a corrupt or truncated .npz archive: {err}") from None


def _npz_array(loaded: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        array = loaded[key]
    except ValueError as err:  # object arrays (never unpickled) and malformed .npy headers
        raise ValueError(f"{path}: {key} is not a plain numeric array ({err})") from None
    if not isinstance(array, np.ndarray):  # a member stored without the .npy format
        raise ValueError(f"{path}: {key} is not stored as a .npy array")
    return array


def _idx_paths(root: Path, spec: _Spec) -> list[Path] | None:
    """IDX files in ``root`` itself or in its torchvision ``raw`` folder, if any."""
    # Reading torchvision's raw folder directly also accepts .gz-only copies,
    # which torchvision itself refuses to load without downloading.
    for folder in (root, root / spec.torchvision_folder / "raw"):
        if (paths := _find_idx_files(folder)) is not None:
            return paths
    return None


def _find_idx_files(folder: Path) -> list[Path] | None:
    """Paths of ``IDX_FILES`` in ``folder``, or None if it holds none of them."""
    found: dict[str, Path] = {}
    for stem in IDX_FILES:
        # Prefer the uncompressed file when both exist: it reads faster.
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                found[stem] = candidate
                break
    if not found:
        return None
    missing = [stem for stem in IDX_FILES if stem not in found]
    if missing:
        raise FileNotFoundError(
            f"{folder} holds only some of the IDX files: missing {', '.join(missing)} (each optionally .gz)"
        )
    return [found[stem] for stem in IDX_FILES]


def _read_torchvision(name: str, root: Path, download: bool) -> tuple[np.ndarray, ...]:
    spec = _SPECS[name]
    folder = root / spec.torchvision_folder
    if not download and not folder.is_dir():
        where = f"{root} does not exist" if not root.exists() else f"nothing usable in {root}"
        raise FileNotFoundError(f"no {name} data found: {where}. Expected {_accepted_roots(name)}")
    from torchvision import datasets

    cls = getattr(datasets, spec.torchvision_class)
    arrays: list[np.ndarray] = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=download)
        except RuntimeError as err:
            raise FileNotFoundError(
                f"torchvision could not load {name} from {folder}: {err} "
                "(download=True fetches it, needs network access)"
            ) from err
        # MNIST-likes keep tensors and CIFAR keeps an array and a list; asarray takes all three.
        arrays += [np.asarray(ds.data), np.asarray(ds.targets)]
    return tuple(arrays)


def _build(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    scale: float,
) -> ImageDataset:
    spec = _SPECS[name]
    x_train = _to_nchw(x_train, spec.image_shape, name, "x_train")
    x_test = _to_nchw(x_test, spec.image_shape, name, "x_test")
    train = _unit_float(x_train, scale)
    if spec.stats is None:
        # Population statistics over images and pixels; float32 reductions are
        # accurate enough here and avoid a float64 copy of the whole split.
        var, mu = torch.var_mean(train, dim=(0, 2, 3), correction=0)
        mean = tuple(float(v) for v in mu)
        std = tuple(float(v) for v in var.sqrt())
        if min(std) == 0:
            raise ValueError(f"{name}: a channel of x_train is constant, cannot normalise it")
    else:
        mean, std = spec.stats
    return ImageDataset(
        name=name,
        x_train=_standardize_(train, mean, std),
        y_train=_to_labels(y_train, name, "y_train"),
        x_test=normalize(x_test, mean, std, scale=scale),
        y_test=_to_labels(y_test, name, "y_test"),
        mean=mean,
        std=std,
        n_classes=spec.n_classes,
    )


def _to_nchw(x: np.ndarray, shape: tuple[int, int, int], name: str, what: str) -> np.ndarray:
    c, h, w = shape
    if x.dtype != np.uint8:
        raise ValueError(f"{name}: {what} must hold uint8 pixels, got {x.dtype}")
    if x.ndim == 3 and c == 1 and x.shape[1:] == (h, w):
        return x[:, None]
    if x.ndim == 4 and x.shape[1:] == (c, h, w):
        return x
    if x.ndim == 4 and x.shape[1:] == (h, w, c):
        # A strided view: the float conversion that follows writes NCHW order in the same pass.
        return x.transpose(0, 3, 1, 2)
    forms = [f"(n, {h}, {w}, {c})", f"(n, {c}, {h}, {w})"]
    if c == 1:
        forms.insert(0, f"(n, {h}, {w})")
    raise ValueError(f"{name}: {what} has shape {x.shape}, expected {' or '.join(forms)}")


def _to_labels(y: np.ndarray, name: str, what: str) -> torch.Tensor:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name}: {what} must be a 1-D integer array, got {y.dtype} of shape {y.shape}")
    return torch.from_numpy(y.astype(np.int64))


def _unit_float(x: np.ndarray | torch.Tensor, scale: float) -> torch.Tensor:
    """Fresh contiguous float32 copy of (n, C, H, W) pixels divided by ``scale``."""
    t = torch.as_tensor(x)
    if t.ndim != 4:
        raise ValueError(f"images must have shape (n, C, H, W), got {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"images must hold real pixel values, got {t.dtype}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be positive and finite, got {scale!r}")
    # copy=True: the in-place steps that follow must never write into the caller's tensor.
    return t.to(torch.float32, memory_format=torch.contiguous_format, copy=True).div_(scale)


def _standardize_(x: torch.Tensor, mean: Stats, std: Stats) -> torch.Tensor:
    """Standardise (n, C, H, W) ``x`` per channel in place; returns ``x``."""
    n_channels = x.shape[1]
    m = torch.tensor(_per_channel(mean, n_channels, "mean"), dtype=x.dtype, device=x.device)
    s = torch.tensor(_per_channel(std, n_channels, "std"), dtype=x.dtype, device=x.device)
    return x.sub_(m.view(1, -1, 1, 1)).div_(s.view(1, -1, 1, 1))


def _per_channel(value: Stats, n_channels: int, what: str) -> tuple[float, ...]:
    values = (float(value),) * n_channels if isinstance(value, numbers.Real) else tuple(map(float, value))
    if len(values) != n_channels:
        raise ValueError(f"{what} needs {n_channels} values (one per channel), got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what} must be finite, got {values}")
    if what == "std" and min(values) <= 0:
        raise ValueError(f"std must be positive, got {values}")
    return values
