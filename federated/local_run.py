"""`flwr run .` on this machine's Simulation Engine, offline: its environment, and stopping what it leaves behind.

`flwr run` starts a local SuperLink (with a SuperExec child) under ``FLWR_HOME``
and leaves it running after the run. ``stop_local_superlink`` stops exactly
those two, found by ``FLWR_HOME`` and the parent's process id, never by name alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

#: Settings for an offline run: no runtime `uv sync`, no telemetry, no update check.
OFFLINE_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
}


def offline_env(home: str | os.PathLike) -> dict[str, str]:
    """This process's environment for an offline `flwr run` under ``FLWR_HOME=home``, this interpreter's bin first."""
    return dict(
        os.environ,
        **OFFLINE_ENV,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        FLWR_HOME=str(home),
        RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",  # Ray would otherwise warn about hiding GPUs on every worker
    )


def _pids(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False).stdout
    return [int(pid) for pid in out.split()]


def stop_local_superlink(home: str | os.PathLike, wait_s: float = 30.0) -> tuple[list[int], list[int]]:
    """Stop the SuperLink `flwr run` started under ``home`` and its SuperExec child, by process id.

    Returns (the process ids signalled, those still alive after ``wait_s``).
    """
    links = _pids(f"flower-superlink.*{home}")
    execs = [pid for link in links for pid in _pids(f"flower-superexec.*--parent-pid {link}")]
    stopped = execs + links
    for pid in stopped:
        subprocess.run(["kill", str(pid)], check=False)
    end = time.monotonic() + wait_s
    while any(Path(f"/proc/{pid}").exists() for pid in stopped) and time.monotonic() < end:
        time.sleep(0.2)
    return stopped, [pid for pid in stopped if Path(f"/proc/{pid}").exists()]
