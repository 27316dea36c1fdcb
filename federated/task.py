"""The federated task without Flower: configuration, data, client uploads and the server's heads.

Every upload mode reduces on the server to one of two things: ridge statistics
(G = sum_i G_i, R = sum_i R_i; "moments", "sketch", "stats", "real", "means")
from which a head W(reg)^T = (G + reg I)^-1 R is solved for any lambda after
the upload, or a set of local heads W_i averaged by their sample counts n_i
("ipc", whose points reproduce each client's own model at the clients' lambda).
Samples are rows: features (n, p), targets (n, k), weights (k, p).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

import distillmem as dm
from distillmem.data import load_dataset, train_val_split
from distillmem.files import atomic_write_bytes
from distillmem.features import FeatureMap, Identity, RandomFCNN, RandomFourier
from distillmem.features.pretrained import BACKBONES
from distillmem.sketch import GramSketch

from .privacy import check_privacy_config, count_problem, private_schema, private_upload

MODES = ("moments", "sketch", "ipc", "real", "stats", "means")
#: Modes whose server-side aggregate is the ridge statistics (G, R).
STATISTICS_MODES = ("moments", "sketch", "stats", "real", "means")
PARTITIONS = ("iid", "dirichlet", "pathological")
#: Random maps on pixels, then the pretrained backbones (federated/features.py: heads on their features).
FEATURE_MAPS = ("fcnn", "identity", "rff", *BACKBONES)
REG_SELECT = ("server", "federated")
#: Candidates for lambda after the upload (the paper's grid for nonlinear maps).
REG_GRID: tuple[float, ...] = tuple(10.0 ** (e / 2) for e in range(-12, 12))


@dataclass(frozen=True)
class Config:
    """One federated run. Field names are the ``[tool.flwr.app.config]`` keys with - for _.

    ``reg`` is a lambda >= 0 or "auto": chosen after the upload, on a
    validation split the server holds (``reg_select="server"``, carved from
    the training split before partitioning) or by a federated evaluation
    round on the clients' held-out splits (``"federated"``). ``max_points``
    caps the rows of an upload (0: the mode's own bound: p for "moments",
    required for "sketch" and "real"); for "sketch" it counts the sketch rows
    and the k rows of the correction (one-shot: of the target R - C) together
    (``sketch_layout``). ``dp_epsilon`` > 0
    turns on differential privacy for "moments", "stats" and "ipc" with
    ``dp_delta`` and the feature-row bound ``dp_clip`` (federated/privacy.py).
    A ``feature_map`` naming a pretrained backbone runs it at ``image_size``
    pixels and fits the heads on its features, through the feature cache
    folder ``feature_cache`` when given (federated/features.py).
    """

    dataset: str = "digits"
    data_path: str = ""
    num_clients: int = 10
    partition: str = "dirichlet"
    alpha: float = 0.5
    classes_per_client: int = 2
    mode: str = "moments"
    ipc: int = 10
    max_points: int = 0
    feature_map: str = "fcnn"
    feature_seed: int = 0
    reg: float | str = 1.0
    reg_select: str = "server"
    val_fraction: float = 0.1
    seed: int = 0
    rounds: int = 1
    deadline_s: float = 300.0
    min_clients: int = 2
    centralized: bool = True
    results_path: str = ""
    image_size: int = 160
    feature_cache: str = ""
    dp_epsilon: float = 0.0
    dp_delta: float = 1e-5
    dp_clip: float = 1.0

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"{key.replace('_', '-')}={getattr(self, key)!r}: {why}")

        for key, choices in (("mode", MODES), ("partition", PARTITIONS), ("feature_map", FEATURE_MAPS), ("reg_select", REG_SELECT)):
            if getattr(self, key) not in choices:
                raise bad(key, f"must be one of {choices}")
        if self.dataset not in dm.data.DATASETS:
            raise bad("dataset", f"must be one of {dm.data.DATASETS}")
        for key in ("dataset", "data_path", "results_path", "feature_cache"):
            if not isinstance(getattr(self, key), str):
                raise bad(key, "must be a string")
        if not isinstance(self.centralized, bool):
            raise bad("centralized", "must be true or false")
        for key, low in (
            ("num_clients", 2), ("classes_per_client", 1), ("ipc", 1), ("max_points", 0), ("rounds", 1), ("min_clients", 1),
            ("seed", 0), ("feature_seed", 0), ("image_size", 1),
        ):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise bad(key, f"must be an integer >= {low}")
        if self.num_clients > 1000:
            raise bad("num_clients", "must be at most 1000")
        if self.min_clients > self.num_clients:
            raise bad("min_clients", f"exceeds num-clients={self.num_clients}")
        for key in ("alpha", "deadline_s"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
                raise bad(key, "must be a finite number > 0")
        if not (isinstance(self.val_fraction, (int, float)) and 0 < self.val_fraction < 1):
            raise bad("val_fraction", "must lie strictly between 0 and 1")
        if self.reg != "auto" and (
            isinstance(self.reg, bool) or not isinstance(self.reg, (int, float)) or not (math.isfinite(self.reg) and self.reg >= 0)
        ):
            raise bad("reg", 'must be a number >= 0 or "auto"')
        if self.mode in ("sketch", "real") and self.max_points == 0:
            raise bad("max_points", f"mode {self.mode!r} needs max-points >= 1 (the rows each client uploads)")
        if self.mode == "ipc" and self.reg == "auto":
            raise bad("reg", 'mode "ipc" fixes lambda on the clients (each distils its own model): give a number')
        if self.rounds > 1 and self.mode not in ("sketch", "moments"):
            raise bad("rounds", "refinement rounds need mode sketch or moments")
        if self.dataset != "digits" and not self.data_path:
            raise bad("data_path", f"dataset {self.dataset!r} needs data-path (a local file or folder)")
        if self.feature_cache and self.feature_map not in BACKBONES:
            raise bad("feature_cache", f"caches a pretrained backbone's features; feature-map={self.feature_map!r} is not one of {tuple(BACKBONES)}")
        check_privacy_config(self)  # dp-epsilon > 0: federated/privacy.py

    @property
    def server_validation(self) -> bool:
        """Whether the server holds a validation split carved from the training split."""
        return self.reg == "auto" and self.reg_select == "server"

    @property
    def client_validation(self) -> bool:
        """Whether each client keeps a held-out split to score candidate lambdas."""
        return self.reg == "auto" and self.reg_select == "federated"

    @classmethod
    def from_mapping(cls, mapping: dict[str, Any]) -> "Config":
        """A Config from kebab-case keys (a Flower run config or a ConfigRecord); unknown keys are refused."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in dict(mapping).items():
            name = key.replace("-", "_")
            if name not in fields:
                raise ValueError(f"unknown configuration key {key!r}; known: {sorted(k.replace('_', '-') for k in fields)}")
            values[name] = _coerce(name, value, fields[name].default)
        return cls(**values)

    def to_mapping(self) -> dict[str, bool | int | float | str]:
        """Kebab-case keys with values a Flower ConfigRecord holds."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}


def _coerce(name: str, value: Any, default: Any) -> Any:
    """TOML and ConfigRecord values to the field's type: ints stay ints, "auto" stays a string."""
    if name == "reg":
        if isinstance(value, str) and value != "auto":
            try:
                return float(value)
            except ValueError:
                return value  # refused with its name by __post_init__
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


# -- data -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Arrays:
    """A dataset as flat numpy arrays: x (n, d) float32, y (n,) int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int


@lru_cache(maxsize=4)
def load_images(dataset: str, data_path: str) -> dm.data.ImageDataset:
    """The dataset as the engine loads it, images (n, C, H, W); cached per process."""
    return load_dataset(dataset, data_path or None)


@lru_cache(maxsize=4)
def load_arrays(dataset: str, data_path: str) -> Arrays:
    """The dataset flattened to rows (sharing memory with ``load_images``); cached per process (every worker loads it once)."""
    data = load_images(dataset, data_path)
    flat = lambda t: np.ascontiguousarray(t.reshape(t.shape[0], -1).numpy())  # noqa: E731
    return Arrays(flat(data.x_train), data.y_train.numpy(), flat(data.x_test), data.y_test.numpy(), data.n_classes)


def split_training(cfg: Config, n_train: int) -> tuple[np.ndarray, np.ndarray]:
    """(client pool, server validation) indices into the training split; validation empty unless requested."""
    if not cfg.server_validation:
        return np.arange(n_train), np.zeros(0, dtype=np.int64)
    pool, val = train_val_split(n_train, cfg.val_fraction, cfg.seed)
    return np.sort(pool.numpy()), np.sort(val.numpy())


def make_feature_map(cfg: Config, in_features: int) -> FeatureMap:
    """phi from the config: "fcnn" (the paper's random FCNN), "identity" or "rff" (random Fourier, p = d).

    With a pretrained backbone the rows are already its features, so the heads' map is the identity.
    """
    if cfg.feature_map == "identity" or cfg.feature_map in BACKBONES:
        return Identity()
    if cfg.feature_map == "rff":
        return RandomFourier(in_features, seed=cfg.feature_seed)
    return RandomFCNN(in_features, seed=cfg.feature_seed)


def spec_json(fmap: FeatureMap) -> str:
    """The map's spec as canonical JSON: what clients send and the server compares."""
    return json.dumps(fmap.spec(), sort_keys=True)


def local_split(cfg: Config, partition_id: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held-out) positions within a client's partition; held-out only for federated lambda selection."""
    if not cfg.client_validation or n < 2:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    perm = np.random.default_rng([cfg.seed, partition_id]).permutation(n)
    n_val = min(max(1, round(cfg.val_fraction * n)), n - 1)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


# -- client uploads ----------------------------------------------------------------


def sketch_layout(cfg: Config, p: int, k: int) -> tuple[int, bool]:
    """(r, corrected) for mode "sketch": r eigen-rows plus, when corrected, k rows of R - C; r + k <= max-points.

    The correction needs the clients' lambda (a number, not "auto") and room
    for more than its k rows; with max-points >= p the r = p rows are exact
    and need none.
    """
    if cfg.reg == "auto" or cfg.max_points <= k or cfg.max_points >= p:
        return min(cfg.max_points, p), False
    return cfg.max_points - k, True


def sends_target(cfg: Config, p: int, k: int) -> bool:
    """Whether a "sketch" upload folds its cross moments and correction into one block, the target R - C.

    A corrected one-shot head needs only R_i - C_i, so k rows do what 2k did;
    refinement rounds need R exactly, so with ``rounds`` > 1 both are sent.
    """
    return cfg.mode == "sketch" and cfg.rounds == 1 and sketch_layout(cfg, p, k)[1]


def upload_cap(cfg: Config, p: int, k: int) -> int:
    """The most rows the variable-length arrays of an upload of this config may carry."""
    if cfg.mode == "ipc":
        return k * cfg.ipc
    if cfg.mode == "moments":
        return min(cfg.max_points or p, p)
    if cfg.mode == "sketch":
        return sketch_layout(cfg, p, k)[0]
    return cfg.max_points


def make_upload(cfg: Config, fmap: FeatureMap, x: np.ndarray, y: np.ndarray, k: int, partition_id: int) -> dict[str, np.ndarray]:
    """The arrays one client sends for ``cfg.mode``, from its data x (n, d) float32 and labels y (n,).

    - moments: a MomentMemory's points, features (m, p) and targets (m, k), float64, m <= cap.
    - sketch: the Gram's top r eigenpairs as rows (r, p) float32, the bound Delta (1,) and the Gram's
      exact diagonal (p,), float64 (see distillmem.sketch); then, when ``sketch_layout`` says corrected,
      one-shot (``sends_target``): the target R - C (k, p) float32 alone; with refinement rounds: the exact
      cross moments R and the local-head correction C, (k, p) float64 each; uncorrected: R alone.
    - stats: the Gram's upper triangle (p (p + 1) / 2,) and the cross moments (k, p), float64.
    - real: r random local points (r, d) float32 with their labels (r,) int64.
    - means: per-class feature means (k, p) float64 and counts (k,) int64.
    - ipc: the paper's distilled set, points (k ipc, d) and targets (k ipc, k), float64, at ``cfg.reg``,
      with the local class counts (k,) int64.
    """
    if cfg.dp_epsilon > 0:
        return private_upload(cfg, fmap, x, y, k)
    p = fmap.out_features(x.shape[1])
    if cfg.mode == "moments":
        cap = cfg.max_points if 0 < cfg.max_points < p else None
        memory = dm.MomentMemory(fmap, n_classes=k, max_points=cap).update(x.astype(np.float64), y)
        return {"features": memory.features_.numpy(), "targets": memory.targets_.numpy()}
    if cfg.mode == "sketch":
        rank, corrected = sketch_layout(cfg, p, k)
        folded = sends_target(cfg, p, k)
        sketch = GramSketch(fmap, n_classes=k, rank=rank, reg=float(cfg.reg) if corrected else None, fold=folded)
        sketch.update(x.astype(np.float64), y)
        arrays = {
            "sketch": sketch.sketch_.numpy().astype(np.float32),
            "shrinkage": np.array([sketch.shrinkage_]),
            "diagonal": sketch.diagonal_.numpy(),
        }
        if folded:
            # float32 like the eigen-rows: the head moves by ~1e-7 relative, far below the sketch's own error.
            arrays["target"] = np.ascontiguousarray(sketch.target_.numpy().T, dtype=np.float32)
            return arrays
        arrays["cross"] = np.ascontiguousarray(sketch.cross_.numpy().T)
        if corrected:
            arrays["correction"] = np.ascontiguousarray(sketch.correction_.numpy().T)
        return arrays
    if cfg.mode == "real":
        rows = np.random.default_rng([cfg.seed, partition_id, 1]).permutation(x.shape[0])[: cfg.max_points]
        rows.sort()
        return {"x": x[rows].astype(np.float32), "labels": y[rows].astype(np.int64)}
    features = _features(fmap, x)
    targets = np.eye(k)[y]
    if cfg.mode == "stats":
        gram = features.T @ features
        return {"gram": gram[np.triu_indices(p)], "cross": targets.T @ features}
    if cfg.mode == "means":
        counts = targets.sum(axis=0)
        sums = targets.T @ features
        means = np.divide(sums, counts[:, None], out=np.zeros_like(sums), where=counts[:, None] > 0)
        return {"means": means, "counts": counts.astype(np.int64)}
    # Distil the classes the client holds: an absent class has a zero row of W, which leaves the
    # closed form ill-posed through a nonlinear preimage; its target column is zero in the upload.
    present = np.unique(y)
    local = np.searchsorted(present, y)
    # A client holding one class still has a local head (one target column); an empty second
    # class keeps distill's labels well-formed and gets no points.
    syn = dm.distill(x.astype(np.float64), local, ipc=cfg.ipc, feature_map=fmap, reg=float(cfg.reg),
                     n_classes=max(present.size, 2), seed=cfg.seed)
    targets = np.zeros((len(syn), k))
    targets[:, present] = syn.y.numpy()[:, : present.size]
    counts = np.bincount(y, minlength=k).astype(np.int64)
    return {"x": syn.x.numpy(), "targets": targets, "reg": np.array([syn.reg]), "counts": counts}


def _features(fmap: FeatureMap, x: np.ndarray) -> np.ndarray:
    """phi(x) (n, p) in float64."""
    return fmap(torch.as_tensor(x, dtype=torch.float64)).numpy()


def refine_upload(fmap: FeatureMap, x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """G_i W^T as (k, p): the client's Gram times the server's current head, k rows per round."""
    features = _features(fmap, x)
    return ((features @ weights.T).T @ features)


def score_candidates(fmap: FeatureMap, x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Correct predictions (c,) int64 of each candidate head weights (c, k, p) on held-out x (n, d), y (n,)."""
    features = _features(fmap, x)
    scores = np.einsum("np,ckp->cnk", features, weights)
    return (scores.argmax(axis=2) == y[None, :]).sum(axis=1).astype(np.int64)


# -- server --------------------------------------------------------------------------


class UploadError(ValueError):
    """An upload the server refuses; the message is the reason recorded in the results."""


def upload_schema(cfg: Config, d: int, p: int, k: int) -> dict[str, tuple[np.dtype, tuple[int | None, ...]]]:
    """Expected dtype and shape of every array of an upload (None: any length up to the cap)."""
    f64, f32, i64 = np.dtype(np.float64), np.dtype(np.float32), np.dtype(np.int64)
    sketch = {"sketch": (f32, (None, p)), "shrinkage": (f64, (1,)), "diagonal": (f64, (p,))}
    if sends_target(cfg, p, k):
        sketch["target"] = (f32, (k, p))
    else:
        sketch["cross"] = (f64, (k, p))
        if cfg.mode == "sketch" and sketch_layout(cfg, p, k)[1]:
            sketch["correction"] = (f64, (k, p))
    return {
        "moments": {"features": (f64, (None, p)), "targets": (f64, (None, k))},
        "sketch": sketch,
        "stats": {"gram": (f64, (p * (p + 1) // 2,)), "cross": (f64, (k, p))},
        "real": {"x": (f32, (None, d)), "labels": (i64, (None,))},
        "means": {"means": (f64, (k, p)), "counts": (i64, (k,))},
        "ipc": {"x": (f64, (None, d)), "targets": (f64, (None, k)), "reg": (f64, (1,)), "counts": (i64, (k,))},
    }[cfg.mode]


def validate_upload(cfg: Config, arrays: dict[str, np.ndarray], n_local: int, d: int, p: int, k: int) -> None:
    """Raise UploadError naming what is wrong: keys, dtype, shape, NaN/Inf, the row cap, labels or counts."""
    schema = private_schema(cfg, upload_schema(cfg, d, p, k))
    if set(arrays) != set(schema):
        raise UploadError(f"arrays {sorted(arrays)} do not match mode {cfg.mode!r}, which sends {sorted(schema)}")
    cap = upload_cap(cfg, p, k)
    rows = None
    for name, (dtype, shape) in schema.items():
        a = arrays[name]
        if a.dtype != dtype:
            raise UploadError(f"{name} has dtype {a.dtype}, expected {dtype}")
        if a.ndim != len(shape) or any(s is not None and s != got for s, got in zip(shape, a.shape)):
            shown = tuple("m" if s is None else s for s in shape)
            raise UploadError(f"{name} has shape {a.shape}, expected {shown}")
        if shape[0] is None:
            if rows is not None and a.shape[0] != rows:
                raise UploadError(f"{name} has {a.shape[0]} rows, the other arrays {rows}")
            rows = a.shape[0]
            if rows > cap:
                raise UploadError(f"{name} has {rows} rows, more than the cap of {cap}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise UploadError(f"{name} contains NaN or Inf")
    if cfg.mode == "real" and arrays["labels"].size and not (0 <= arrays["labels"].min() and arrays["labels"].max() < k):
        raise UploadError(f"labels outside [0, {k}): min {arrays['labels'].min()}, max {arrays['labels'].max()}")
    if cfg.mode in ("means", "ipc"):
        counts = arrays["counts"]
        if counts.min() < 0 or int(counts.sum()) != n_local:
            raise UploadError(f"counts {counts.tolist()} are not >= 0 or do not sum to n-local={n_local}")
    if cfg.mode == "moments":
        # The memory's targets are U^T T for orthonormal U, so their energy is at most ||T||^2 = n (one-hot T).
        energy = float(np.square(arrays["targets"]).sum())
        if energy > n_local * (1 + 1e-6):
            raise UploadError(f"targets carry energy {energy:.6g}, more than n-local={n_local} one-hot labels can")
    if (problem := count_problem(cfg, arrays, n_local)) is not None:
        raise UploadError(problem)
    if cfg.mode == "sketch" and arrays["shrinkage"][0] < 0:
        raise UploadError(f"shrinkage {arrays['shrinkage'][0]} is negative")
    if cfg.mode == "ipc" and not arrays["reg"][0] >= 0:
        raise UploadError(f"reg {arrays['reg'][0]} is negative")


def upload_statistics(
    cfg: Config, fmap: FeatureMap, arrays: dict[str, np.ndarray], n_local: int, d: int, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """An upload's contribution (G_i (p, p), R_i (p, k)) to the ridge statistics, float64, and for a
    corrected "sketch" its correction C_i (p, k) (else None): the one-shot head is (G + reg I)^-1 (R - C).
    A sketch's G_i is the estimate its head uses (``GramSketch.head_estimate``).

    Raises UploadError when a sketch's arrays are not one client's sketch.
    """
    if cfg.mode == "moments":
        f, t = arrays["features"], arrays["targets"]
        return f.T @ f, f.T @ t, None
    if cfg.mode == "sketch":
        folded = "target" in arrays  # R - C in one block
        correction = arrays["correction"].T if "correction" in arrays else None
        try:
            sketch = GramSketch.from_arrays(
                fmap, arrays["sketch"], arrays["target" if folded else "cross"].T, float(arrays["shrinkage"][0]),
                arrays["diagonal"], n_seen=n_local, n_features_in=d, correction=correction,
                reg=float(cfg.reg) if folded or correction is not None else None, fold=folded,
            )
        except ValueError as err:
            raise UploadError(str(err)) from None
        if folded:
            return sketch.gram(sketch.head_estimate).numpy(), sketch.target_.numpy(), None
        return sketch.gram(sketch.head_estimate).numpy(), sketch.cross_.numpy(), None if correction is None else sketch.correction_.numpy()
    if cfg.mode == "stats":
        p = arrays["cross"].shape[1]
        gram = np.zeros((p, p))
        gram[np.triu_indices(p)] = arrays["gram"]
        return gram + np.triu(gram, 1).T, arrays["cross"].T, None
    if cfg.mode == "real":
        f = _features(fmap, arrays["x"])
        return f.T @ f, f.T @ np.eye(k)[arrays["labels"]], None
    # means: every sample of class c placed at its class mean; R = sum_c n_c mu_c e_c^T is exact.
    means, counts = arrays["means"], arrays["counts"].astype(np.float64)
    return (means.T * counts) @ means, (means.T * counts), None


def upload_head(cfg: Config, fmap: FeatureMap, arrays: dict[str, np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The local head W_i (k, p) an "ipc" upload reproduces (KRR on its points at its reg) and its class counts (k,)."""
    model = dm.KRR(fmap, reg=float(arrays["reg"][0]), n_classes=k).fit(arrays["x"], arrays["targets"])
    return model.weights_.numpy(), arrays["counts"].astype(np.float64)


def average_heads(heads: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Row c of the head: the clients' rows c averaged by their counts of class c (zero where no client has c).

    Under label skew a client's row for a class it barely holds is poor; weighting
    rows by class counts rather than whole heads by n_i keeps each row from the
    clients that saw the class.
    """
    weights = sum(counts[:, None] * w for w, counts in heads)
    totals = sum(counts for _, counts in heads)
    return np.divide(weights, totals[:, None], out=np.zeros_like(weights), where=totals[:, None] > 0)


class RidgePath:
    """W(reg)^T = (G + reg I)^-1 R for many lambdas from one eigendecomposition of G (p, p)."""

    def __init__(self, gram: np.ndarray, cross: np.ndarray) -> None:
        self.eig, self.vec = np.linalg.eigh(gram)
        self.eig = np.clip(self.eig, 0.0, None)  # rounding can leave tiny negative eigenvalues of a PSD sum
        self.coef = self.vec.T @ cross

    def weights(self, reg: float) -> np.ndarray:
        """W (k, p) at ``reg``."""
        return (self.vec @ (self.coef / (self.eig + reg)[:, None])).T


def accuracy(fmap: FeatureMap, weights: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """Share of x (n, d) whose argmax of W phi(x) is y (n,)."""
    return float((_features(fmap, x) @ weights.T).argmax(axis=1).__eq__(y).mean())


def write_json_atomic(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as JSON to ``path`` (its folder created if needed) with the engine's atomic writer."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(target, json.dumps(payload, indent=2, sort_keys=True).encode())


def training_partitions(cfg: Config, data: Arrays) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """(client pool, the clients' positions into it): the partitions of the run, identical in every process."""
    from .partitions import partition_indices

    pool, _ = split_training(cfg, data.x_train.shape[0])
    labels = tuple(data.y_train[pool].tolist())
    return pool, partition_indices(labels, cfg.num_clients, cfg.partition, float(cfg.alpha), cfg.classes_per_client, cfg.seed)


def client_partition(cfg: Config, partition_id: int, num_partitions: int, data_path: str) -> tuple[np.ndarray, ...]:
    """A client's (x_fit, y_fit, x_held, y_held): its partition of the training split, held-out part for lambda.

    ``data_path`` is the client's own copy of the data (a deployment's
    node-config may point elsewhere than the server's).
    """
    if num_partitions != cfg.num_clients:
        raise ValueError(f"the node has num-partitions={num_partitions}, the run num-clients={cfg.num_clients}")
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id={partition_id} is outside 0..{num_partitions - 1}")
    data = load_arrays(cfg.dataset, data_path)
    pool, parts = training_partitions(cfg, data)
    idx = pool[parts[partition_id]]
    fit, held = local_split(cfg, partition_id, idx.shape[0])
    if cfg.feature_map in BACKBONES:
        from .features import partition_features

        x, y = partition_features(cfg, data_path, idx), data.y_train[idx]
    else:
        x, y = data.x_train[idx], data.y_train[idx]
    return x[fit], y[fit], x[held], y[held]
