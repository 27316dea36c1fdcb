"""Differential privacy for the uploads (``dp-epsilon > 0``): the engine's mechanisms, called per client.

- "moments" and "stats": ``distillmem.private_stats.PrivateStatistics``, the
  Gaussian mechanism on the client's (G_i, R_i, n_i), feature rows clipped to
  ``dp-clip``; "moments" sends the points of its PSD part. The upload adds the
  noisy count (1,), and the node reports that count, rounded, as ``n-local``.
- "ipc": ``distillmem.distill_private`` (Theorem 6.2), identity map, lambda = 0.

The noise is drawn from a seed the operating system gives, never from the run's
``seed``: the server sends that seed and could subtract the noise.
No Flower imports; ``federated.task`` calls these functions.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import numpy as np

import distillmem as dm
from distillmem.features import FeatureMap
from distillmem.private_stats import PrivateStatistics, statistics_points
from distillmem.private_stats import privacy_report as statistics_report

#: Modes with a private variant.
PRIVATE_MODES = ("moments", "stats", "ipc")

_SCOPE = (
    "Each client's upload is private with respect to that client's own samples; the clients hold disjoint "
    "samples, so the server's head, computed from the uploads alone, is (epsilon, delta)-DP with respect to "
    "adding or removing one training sample anywhere (parallel composition). Not covered: the run config, "
    "the number of clients, who answered and each node's partition-id; with reg=auto and reg-select=server, "
    "the server's own validation split (used without noise; it is not client data); and the centralized "
    "reference (centralized_accuracy, weight_error), which reads all data without noise and exists only to "
    "measure the cost of privacy in a simulation."
)
_IPC_SIGMA = (
    "per client: 2 sqrt(2) sqrt(ln(1.25/delta)) B max_c sqrt(n_c) / (sigma_0^2 epsilon sqrt(ipc (ipc - 1))), "
    "sigma_0 = 0.99 sigma_min of the client's clipped inputs; not sent, since sigma_0 is a non-private "
    "statistic of the client's data"
)
_IPC_COVERS = (
    "Theorem 6.2 (docs/math.md 8.3): each row of D = pinv(X_S)^T, taken alone, is (epsilon, delta)-DP with "
    "respect to replacing one of the client's samples. NOT covered: the client's model W_i, which the "
    "points give back exactly (so the server's head is not private at all), the class counts (sent exactly), "
    "the whole set (no composition over its rows) and sigma_0 (a statistic of the data)."
)


def check_privacy_config(cfg: Any) -> None:
    """Raise ValueError naming the key and value for any dp-* setting that is invalid or unsupported with the rest."""

    def bad(key: str, why: str) -> ValueError:
        return ValueError(f"{key.replace('_', '-')}={getattr(cfg, key)!r}: {why}")

    def number(value: Any) -> bool:
        return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)

    if not (number(cfg.dp_epsilon) and cfg.dp_epsilon >= 0):
        raise bad("dp_epsilon", "must be a finite number > 0, or 0 to turn differential privacy off")
    if not (number(cfg.dp_delta) and 0 < cfg.dp_delta < 1):
        raise bad("dp_delta", "must lie strictly between 0 and 1")
    if not (number(cfg.dp_clip) and cfg.dp_clip > 0):
        raise bad("dp_clip", "must be a finite number > 0 (the bound B on feature-row norms)")
    if cfg.dp_epsilon == 0:
        return
    if cfg.mode not in PRIVATE_MODES:
        raise bad("mode", f"has no private variant; dp-epsilon > 0 needs one of {PRIVATE_MODES}")
    if cfg.rounds > 1:
        raise bad("rounds", "refinement rounds send G_i D^T without noise, which dp-epsilon does not cover: use rounds=1")
    if cfg.reg == "auto" and cfg.reg_select == "federated":
        raise bad("reg_select", "the clients' held-out scores would be sent without noise: use reg-select='server' or a fixed reg")
    if cfg.mode == "ipc":
        if cfg.feature_map != "identity":
            raise bad(
                "feature_map",
                "private ipc uses distill_private (Theorem 6.2), which holds for linear ridge regression on the "
                "inputs only: use feature-map='identity', or mode moments/stats for other maps",
            )
        if cfg.reg != 0:
            raise bad("reg", "private ipc uses Theorem 6.2, which holds at lambda = 0: set reg=0")
        if not cfg.dp_epsilon < 1:
            raise bad("dp_epsilon", "private ipc (Theorem 6.2, classical Gaussian calibration) needs epsilon < 1")
        if cfg.ipc < 2:
            raise bad("ipc", "ipc=1 cannot be private (I - Y_S^+ Y_S = 0: no noise reaches the points); use ipc >= 2")


def private_upload(cfg: Any, fmap: FeatureMap, x: np.ndarray, y: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """The private upload of ``cfg.mode`` from x (n, d) float32 and labels y (n,).

    - moments: features (m, p), targets (m, k) of the PSD part of the noisy
      statistics (``statistics_points``, then the ``max-points`` budget; m = 0 when
      the noise swamps every direction) and the noisy count (1,), float64;
    - stats: the noisy Gram's upper triangle (p (p + 1) / 2,), cross moments (k, p) and count (1,), float64;
    - ipc: ``distill_private``'s points (k ipc, d) and targets (k ipc, k), reg (1,) = 0, float64,
      and the exact class counts (k,) int64.
    """
    if cfg.mode == "ipc":
        return _private_ipc(cfg, x, y, k)
    stats = PrivateStatistics(fmap, k, epsilon=cfg.dp_epsilon, delta=cfg.dp_delta, norm_bound=cfg.dp_clip)
    stats.fit(x.astype(np.float64), y)
    count = np.array([stats.count_])
    if cfg.mode == "stats":
        return {"gram": stats.upper_triangle().numpy(), "cross": np.ascontiguousarray(stats.cross_.numpy().T), "count": count}
    features, targets = statistics_points(stats.gram_, stats.cross_, stats.released_count)
    p = features.shape[1]
    if features.shape[0] and 0 < cfg.max_points < features.shape[0]:
        memory = dm.MomentMemory.from_features(fmap, k, features, targets, max_points=cfg.max_points)
        features, targets = memory.features_, memory.targets_
    # No row left (the noise swamps every direction) is a valid, empty upload, not an error.
    return {"features": features.numpy().reshape(-1, p), "targets": targets.numpy().reshape(-1, k), "count": count}


def _private_ipc(cfg: Any, x: np.ndarray, y: np.ndarray, k: int) -> dict[str, np.ndarray]:
    # Distil the classes the client holds (as the non-private mode does); absent classes get zero targets.
    present = np.unique(y)
    syn = dm.distill_private(
        x.astype(np.float64), np.searchsorted(present, y), ipc=cfg.ipc, epsilon=cfg.dp_epsilon, delta=cfg.dp_delta,
        norm_bound=cfg.dp_clip, n_classes=present.size, seed=secrets.randbits(63),
    )
    targets = np.zeros((len(syn), k))
    targets[:, present] = syn.y.numpy()
    counts = np.bincount(y, minlength=k).astype(np.int64)
    return {"x": syn.x.numpy(), "targets": targets, "reg": np.array([syn.reg]), "counts": counts}


def private_schema(cfg: Any, schema: dict[str, tuple[np.dtype, tuple[int | None, ...]]]) -> dict[str, tuple[np.dtype, tuple[int | None, ...]]]:
    """The upload schema with the noisy count (1,) float64 that private moments and stats uploads add."""
    if cfg.dp_epsilon > 0 and cfg.mode in ("moments", "stats"):
        return {**schema, "count": (np.dtype(np.float64), (1,))}
    return schema


def released_count(count: float) -> int:
    """The sample count a node reports for a noisy count n~: round(n~), at least 1 (post-processing)."""
    return max(1, round(float(count)))


def node_count(arrays: dict[str, np.ndarray], n: int) -> int:
    """What a node reports as ``n-local``: the released noisy count when the upload has one, else n."""
    return released_count(arrays["count"][0]) if "count" in arrays else n


def count_problem(cfg: Any, arrays: dict[str, np.ndarray], n_local: int) -> str | None:
    """Why a private upload's ``n-local`` disagrees with its noisy count, or None."""
    if cfg.dp_epsilon > 0 and "count" in arrays and n_local != released_count(arrays["count"][0]):
        return f"n-local={n_local} is not the upload's released count round({float(arrays['count'][0]):.6g})"
    return None


def privacy_report(cfg: Any) -> dict[str, Any]:
    """What the run's uploads guarantee: {"enabled": False} or epsilon, delta, B, the noise scale and the scope."""
    if cfg.dp_epsilon == 0:
        return {"enabled": False}
    if cfg.mode == "ipc":
        report = {
            "mechanism": "distill_private (Theorem 6.2) on each client's inputs",
            "calibration": f"classical, constant {dm.privacy.NOISE_CONSTANT:.6g} (2 sqrt(2))",
            "epsilon": float(cfg.dp_epsilon),
            "delta": float(cfg.dp_delta),
            "norm_bound": float(cfg.dp_clip),
            "neighbouring": "replace one sample (labels fixed)",
            "sigma": _IPC_SIGMA,
            "covers": _IPC_COVERS,
        }
    else:
        report = statistics_report(cfg.dp_epsilon, cfg.dp_delta, cfg.dp_clip)
        report["count"] = "n-local is the noisy count round(n + N(0, sigma^2)), part of the same mechanism"
    return {"enabled": True, **report, "scope": _SCOPE}


def privacy_log_line(report: dict[str, Any]) -> str:
    """One log line of a report."""
    if not report["enabled"]:
        return "differential privacy off"
    sigma = report["sigma"] if isinstance(report["sigma"], str) else f"{report['sigma']:.6g}"
    return f"differential privacy: epsilon {report['epsilon']:g}, delta {report['delta']:g}, B {report['norm_bound']:g}, sigma {sigma}"

