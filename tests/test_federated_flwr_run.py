"""`flwr run .` on the Simulation Engine, offline, with a managed local SuperLink that the test stops by pid.

Select with ``-m flwr_run`` (or this file); CI runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from federated.local_run import offline_env, stop_local_superlink

pytestmark = pytest.mark.flwr_run

ROOT = Path(__file__).resolve().parents[1]


def test_flwr_run_offline_writes_the_results_and_its_superlink_is_stopped(tmp_path):
    home = tmp_path / "flwr-home"
    results = tmp_path / "out" / "results-{run_id}.json"  # a folder that does not exist yet; one file per run
    bin_dir = Path(sys.executable).parent
    env = offline_env(home)
    command = [
        str(bin_dir / "flwr"), "run", ".", "--stream",
        "--run-config", f"num-clients=3 min-clients=3 mode='sketch' max-points=16 results-path='{results}'",
        "--federation-config", "num-supernodes=3 client-resources-num-cpus=1 client-resources-num-gpus=0 init-args-num-cpus=2",
    ]
    try:
        run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        written = list((tmp_path / "out").glob("results-*.json"))
        assert len(written) == 1 and written[0].stem.removeprefix("results-").isdigit(), written
        saved = json.loads(written[0].read_text())
        assert saved["config"]["mode"] == "sketch" and saved["config"]["num-clients"] == 3
        assert len(saved["clients"]["accepted"]) == 3 and saved["accuracy"] > 0.8
        assert len(saved["upload_bytes"]) == 3 and saved["total_upload_bytes"] == sum(saved["upload_bytes"])
    finally:
        # The managed SuperLink outlives `flwr run`: stop it and its SuperExec child by pid.
        stopped, alive = stop_local_superlink(home)
    assert stopped, "flwr run started no local SuperLink under this FLWR_HOME"
    assert not alive, f"still running after stop: {alive}"
