"""`flwr run .` on the Simulation Engine, offline, with a managed local SuperLink that the test stops by pid.

Select with ``-m flwr_run`` (or this file); CI runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.flwr_run

ROOT = Path(__file__).resolve().parents[1]


def _pids(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False).stdout
    return [int(pid) for pid in out.split()]


def test_flwr_run_offline_writes_the_results_and_its_superlink_is_stopped(tmp_path):
    home = tmp_path / "flwr-home"
    results = tmp_path / "out" / "results-{run_id}.json"  # a folder that does not exist yet; one file per run
    bin_dir = Path(sys.executable).parent
    env = dict(
        os.environ,
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        FLWR_HOME=str(home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
    )
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
        links = _pids(f"flower-superlink.*{home}")
        execs = [pid for link in links for pid in _pids(f"flower-superexec.*--parent-pid {link}")]
        for pid in execs + links:
            subprocess.run(["kill", str(pid)], check=False)
        end = time.monotonic() + 20
        while any(Path(f"/proc/{pid}").exists() for pid in execs + links) and time.monotonic() < end:
            time.sleep(0.2)
    assert links, "flwr run started no local SuperLink under this FLWR_HOME"
    assert not [pid for pid in execs + links if Path(f"/proc/{pid}").exists()]
