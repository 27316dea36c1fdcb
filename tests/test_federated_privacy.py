"""Differential privacy in the federated app: dp-* configuration, private uploads for moments, stats and ipc,
the noise actually sent, server-side validation of noisy uploads, and what every result reports."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chi2

from distillmem.features import Identity
from distillmem.private_stats import gaussian_sigma, statistics_sensitivity
from federated import simulate
from federated.privacy import node_count, released_count
from federated.task import Config, UploadError, make_upload, upload_head, upload_statistics, validate_upload

ROOT = Path(__file__).resolve().parents[1]
D, K, N = 12, 3, 500


@pytest.fixture(scope="module")
def client():
    """One client's data: x (N, D) float32 of full rank with row norms about 3-5, labels (N,)."""
    gen = np.random.default_rng(0)
    y = np.arange(N) % K
    x = (gen.normal(size=(K, D))[y] + gen.normal(size=(N, D))).astype(np.float32)
    return x, y


def _cfg(**kw) -> Config:
    return Config(**{"feature_map": "identity", "dp_epsilon": 1.0, "dp_clip": 2.0, **kw})


def _clipped(x: np.ndarray, bound: float) -> np.ndarray:
    x = x.astype(np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norms > bound, x * bound / norms, x)


# -- configuration -------------------------------------------------------------------------------


def test_dp_keys_are_in_the_app_config_with_the_defaults():
    app = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    defaults = Config()
    assert (app["dp-epsilon"], app["dp-delta"], app["dp-clip"]) == (defaults.dp_epsilon, defaults.dp_delta, defaults.dp_clip)
    assert defaults.dp_epsilon == 0.0  # off unless asked for
    cfg = Config.from_mapping({"dp-epsilon": 2, "dp-clip": 3, "feature-map": "identity"})
    assert (cfg.dp_epsilon, cfg.dp_clip, cfg.dp_delta) == (2.0, 3.0, 1e-5)
    assert Config.from_mapping(cfg.to_mapping()) == cfg


@pytest.mark.parametrize(
    "options, match",
    [
        ({"dp_epsilon": -1.0}, r"dp-epsilon=-1.0: must be a finite number > 0, or 0"),
        ({"dp_epsilon": float("nan")}, r"dp-epsilon=nan"),
        ({"dp_delta": 0.0}, r"dp-delta=0.0: must lie strictly between 0 and 1"),
        ({"dp_delta": 1.0}, r"dp-delta=1.0"),
        ({"dp_delta": -1e-5, "dp_epsilon": 0.0}, r"dp-delta=-1e-05"),
        ({"dp_clip": 0.0}, r"dp-clip=0.0: must be a finite number > 0"),
        ({"dp_clip": -2.0}, r"dp-clip=-2.0"),
        ({"mode": "sketch", "max_points": 8}, r"mode='sketch': has no private variant"),
        ({"mode": "means"}, r"mode='means': has no private variant"),
        ({"rounds": 3}, r"rounds=3: refinement rounds send G_i D\^T without noise"),
        ({"reg": "auto", "reg_select": "federated"}, r"reg-select='federated'"),
        ({"mode": "ipc", "feature_map": "fcnn", "reg": 0.0, "dp_epsilon": 0.5}, r"feature-map='fcnn': private ipc uses distill_private \(Theorem 6.2\), which holds for linear ridge regression"),
        ({"mode": "ipc", "reg": 1.0, "dp_epsilon": 0.5}, r"reg=1.0: private ipc uses Theorem 6.2, which holds at lambda = 0"),
        ({"mode": "ipc", "reg": 0.0, "dp_epsilon": 2.0}, r"dp-epsilon=2.0: private ipc .* needs epsilon < 1"),
        ({"mode": "ipc", "reg": 0.0, "dp_epsilon": 0.5, "ipc": 1}, r"ipc=1: ipc=1 cannot be private"),
    ],
)
def test_bad_dp_config_is_refused_with_its_key_and_value(options, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**options)


# -- private uploads and the server's validation ----------------------------------------------------


def test_stats_upload_carries_the_stated_noise(client):
    x, y = client
    cfg = _cfg(mode="stats", dp_epsilon=0.8, dp_clip=2.0)
    arrays = make_upload(cfg, Identity(), x, y, K, 0)
    f = _clipped(x, 2.0)
    assert np.mean(np.linalg.norm(x, axis=1) > 2.0) > 0.9  # almost every row is clipped
    sigma = gaussian_sigma(math.sqrt(2.0**4 + 2.0**2 + 1), 0.8, 1e-5)
    noise = np.concatenate([arrays["gram"] - (f.T @ f)[np.triu_indices(D)], (arrays["cross"] - np.eye(K)[y].T @ f).ravel()])
    statistic = float(np.square(noise).sum()) / sigma**2
    assert chi2.ppf(1e-6, noise.size) < statistic < chi2.ppf(1 - 1e-6, noise.size)
    assert abs(arrays["count"][0] - N) < 6 * sigma and arrays["count"][0] != N


@pytest.mark.parametrize("mode, extra", [("stats", {}), ("moments", {}), ("moments", {"max_points": 4})])
def test_noisy_uploads_pass_the_same_validation_and_tampering_is_caught(client, mode, extra):
    x, y = client
    cfg = _cfg(mode=mode, **extra)
    arrays = make_upload(cfg, Identity(), x, y, K, 0)
    n_local = node_count(arrays, N)
    assert n_local == released_count(arrays["count"][0]) == max(1, round(float(arrays["count"][0])))  # the noisy count, not N
    validate_upload(cfg, arrays, n_local, D, D, K)
    gram, cross, _ = upload_statistics(cfg, Identity(), arrays, n_local, D, K)
    assert np.allclose(gram, gram.T) and cross.shape == (D, K)
    if mode == "moments":
        assert arrays["features"].shape[0] <= (extra.get("max_points") or D)
        assert float(np.square(arrays["targets"]).sum()) <= n_local * (1 + 1e-9)
    with pytest.raises(UploadError, match=r"n-local=.* is not the upload's released count"):
        validate_upload(cfg, arrays, n_local + 5, D, D, K)
    with pytest.raises(UploadError, match=r"arrays .* do not match mode"):
        validate_upload(cfg, {key: a for key, a in arrays.items() if key != "count"}, n_local, D, D, K)
    broken = {key: a.copy() for key, a in arrays.items()}
    broken["cross" if mode == "stats" else "features"].flat[0] = np.nan
    with pytest.raises(UploadError, match="contains NaN or Inf"):
        validate_upload(cfg, broken, n_local, D, D, K)
    if mode == "moments":
        loud = {**arrays, "targets": arrays["targets"] * 100.0}
        with pytest.raises(UploadError, match="targets carry energy"):
            validate_upload(cfg, loud, n_local, D, D, K)


def test_private_ipc_upload_gives_the_clipped_least_squares_head(client):
    x, y = client
    cfg = _cfg(mode="ipc", reg=0.0, dp_epsilon=0.5, ipc=3)
    arrays = make_upload(cfg, Identity(), x, y, K, 0)
    validate_upload(cfg, arrays, node_count(arrays, N), D, D, K)
    assert set(arrays) == {"x", "targets", "reg", "counts"} and arrays["reg"][0] == 0.0
    weights, counts = upload_head(cfg, Identity(), arrays, K)
    f = _clipped(x, 2.0)
    reference = (np.linalg.pinv(f) @ np.eye(K)[y]).T
    assert np.linalg.norm(weights - reference) / np.linalg.norm(reference) < 1e-8
    assert counts.tolist() == np.bincount(y).tolist()
    again = make_upload(cfg, Identity(), x, y, K, 0)
    assert not np.allclose(again["x"], arrays["x"])  # the noise seed comes from the OS, not from cfg.seed


def test_the_noise_does_not_come_from_the_run_seed(client):
    x, y = client
    cfg = _cfg(mode="stats")
    first, second = (make_upload(cfg, Identity(), x, y, K, 0)["gram"] for _ in range(2))
    assert not np.array_equal(first, second)


def test_non_private_uploads_are_unchanged(client):
    x, y = client
    cfg = _cfg(mode="stats", dp_epsilon=0.0)
    arrays = make_upload(cfg, Identity(), x, y, K, 0)
    assert set(arrays) == {"gram", "cross"} and node_count(arrays, N) == N
    f = x.astype(np.float64)
    assert np.allclose(arrays["gram"], (f.T @ f)[np.triu_indices(D)], rtol=1e-12, atol=1e-9)


# -- whole runs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["moments", "stats"])
def test_run_reports_the_guarantee_and_approaches_the_clipped_head_at_large_epsilon(mode, tmp_path):
    common = dict(dataset="digits", num_clients=4, mode=mode, feature_map="identity", reg=10.0, engine="inprocess")
    plain = simulate(**common, centralized=False)
    assert plain["privacy"] == {"enabled": False}
    path = tmp_path / "run.json"
    big = simulate(**common, dp_epsilon=1e9, dp_clip=20.0, results_path=str(path))  # B above every row (<= 9.6): no clipping
    report = big["privacy"]
    assert report["enabled"] and (report["epsilon"], report["delta"], report["norm_bound"]) == (1e9, 1e-5, 20.0)
    assert report["sigma"] == pytest.approx(gaussian_sigma(statistics_sensitivity(20.0), 1e9, 1e-5), rel=1e-12)
    assert "parallel composition" in report["scope"] and "add or remove one sample" in report["neighbouring"]
    assert json.loads(path.read_text())["privacy"] == report
    error = float(np.linalg.norm(big["head"].weights_.numpy() - plain["head"].weights_.numpy()) / np.linalg.norm(plain["head"].weights_.numpy()))
    assert error < 0.05 and abs(big["accuracy"] - plain["accuracy"]) <= 0.01  # sigma = 0.009
    assert len(big["clients"]["accepted"]) == 4
    small = simulate(**common, dp_epsilon=0.5, dp_clip=20.0, centralized=False)
    assert len(small["clients"]["accepted"]) == 4  # validated and accepted, even where the noise swamps the data
    assert small["accuracy"] < big["accuracy"]


def test_private_ipc_run_reports_what_theorem_6_2_does_not_cover():
    # 40 clients of digits hold about 36 samples each (< d = 64), so each client's inputs have full row rank.
    result = simulate(dataset="digits", num_clients=40, partition="iid", mode="ipc", ipc=2, feature_map="identity", reg=0.0,
                      engine="inprocess", dp_epsilon=0.5, dp_clip=20.0, centralized=False)
    report = result["privacy"]
    assert report["mechanism"].startswith("distill_private") and report["epsilon"] == 0.5 and report["norm_bound"] == 20.0
    assert "NOT covered: the client's model W_i" in report["covers"] and "not sent" in report["sigma"]
    assert len(result["clients"]["accepted"]) == 40 and result["accuracy"] > 0.5
