"""The app on Flower's Simulation Engine (Ray): the same head as the in-process grid, faults included,
and no Ray process left behind. Select with ``-k ray`` (or this file); CI runs it."""

from __future__ import annotations

import shutil
import subprocess
import tempfile

import pytest
import torch

from federated import simulate

from test_federated import _crash, _nan, _tampering_app

pytestmark = pytest.mark.ray


def _processes_under(path: str) -> list[int]:
    """Pids of processes whose command line names ``path`` (Ray's raylet, gcs_server and workers do)."""
    out = subprocess.run(["pgrep", "-f", path], capture_output=True, text=True, check=False).stdout
    return [int(pid) for pid in out.split()]


def test_simulation_engine_gives_the_in_process_head_and_leaves_no_ray_process():
    temp = tempfile.mkdtemp(prefix="dmray-")  # short: Ray's socket paths must fit in 107 characters
    app = _tampering_app({1: _crash, 2: _nan})
    options = dict(num_clients=4, partition="dirichlet", alpha=0.5, mode="moments", reg=1.0, seed=0, deadline_s=120.0)
    try:
        ray = simulate(engine="ray", client_app=app, ray_temp_dir=temp, **options)
        left = _processes_under(temp)
        for pid in left:  # started by this test (they name its temp dir): stop them by pid, then fail
            subprocess.run(["kill", str(pid)], check=False)
        assert not left, f"Ray processes left running: {left}"
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    local = simulate(engine="inprocess", client_app=app, **options)
    assert torch.allclose(ray["head"].weights_, local["head"].weights_, rtol=0, atol=1e-12)
    assert ray["accuracy"] == local["accuracy"]
    assert len(ray["clients"]["accepted"]) == 2
    reasons = sorted(ray["clients"]["rejected"].values())
    assert "disk on fire" in reasons[0] and "NaN or Inf" in reasons[1]
    assert sorted(ray["upload_bytes"]) == sorted(local["upload_bytes"])


def test_flower_fedavg_strategy_on_the_simulation_engine_matches_the_in_process_grid():
    """Flower's FedAvg strategy with the FedAvg ClientApp on Ray: the in-process model, and no Ray process left."""
    from federated import simulate_fedavg

    temp = tempfile.mkdtemp(prefix="dmray-")
    options = dict(num_clients=3, rounds=2, lr=0.1, batch_size=32, seed=1, deadline_s=120.0)
    try:
        ray = simulate_fedavg(engine="ray", ray_temp_dir=temp, **options)
        left = _processes_under(temp)
        for pid in left:
            subprocess.run(["kill", str(pid)], check=False)
        assert not left, f"Ray processes left running: {left}"
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    local = simulate_fedavg(engine="inprocess", **options)
    for name, value in local["model"].state_dict().items():
        torch.testing.assert_close(ray["model"].state_dict()[name], value, rtol=1e-5, atol=1e-6)
    assert ray["nodes"] == 3 and len(ray["accuracy"]) == 2
