"""The processes of one deployment: started with a marker, watched with their descendants, stopped by process id.

Every process started here carries the environment variable ``MARKER`` set
to the deployment's token. Flower's own children (``flower-superexec``,
``flwr-serverapp``, ``flwr-clientapp``) inherit it, which finds them even
once re-parented; nothing without the token is ever signalled.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

#: The environment variable that marks every process of one deployment.
MARKER = "DISTILLMEM_DEPLOYMENT"
#: Scans for survivors, each followed by SIGKILL, before stop gives up.
KILL_ROUNDS = 5


class DeploymentError(RuntimeError):
    """A deployment step failed; the message carries the processes' log tails."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free on ``host`` (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def executable(name: str) -> str:
    """A Flower command from this interpreter's environment first, then from PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise DeploymentError(f"{name} not found next to {sys.executable} or on PATH: install flwr>=1.41 in this environment")
    return found


def marked_processes(token: str) -> list[psutil.Process]:
    """Running processes whose environment carries ``MARKER=token`` (this user's processes only)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get(MARKER) == token:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@dataclass
class _Started:
    name: str
    popen: subprocess.Popen
    log: Path


@dataclass
class ProcessSet:
    """The processes of one deployment: started with the marker, watched, and stopped by process id."""

    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: list[_Started] = field(default_factory=list)
    # Every process ever seen, keyed by (pid, start time) so that a reused pid is never signalled.
    seen: dict[tuple[int, float], psutil.Process] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
        """Start ``argv`` in its own session (a terminal's Ctrl-C reaches only us), output to ``log``."""
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                argv, env={**env, MARKER: self.token}, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=cwd, start_new_session=True,
            )
        self.started.append(_Started(name, popen, log))
        self.watch()
        return popen

    def watch(self) -> None:
        """Record the started processes, their descendants and every marked process now running."""
        procs: list[psutil.Process] = []
        for item in self.started:
            try:
                top = psutil.Process(item.popen.pid)
                procs += [top, *top.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
        for proc in procs + marked_processes(self.token):
            try:
                self.seen.setdefault((proc.pid, proc.create_time()), proc)
            except psutil.NoSuchProcess:
                continue

    def dead(self) -> list[_Started]:
        """Started processes that have exited."""
        return [item for item in self.started if item.popen.poll() is not None]

    def alive(self) -> list[psutil.Process]:
        """Every recorded or marked process still running (zombies count as gone)."""
        self.watch()
        out = []
        for proc in self.seen.values():
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    out.append(proc)
            except psutil.NoSuchProcess:
                continue
        return out

    def stop(self, grace_s: float = 10.0) -> list[str]:
        """SIGTERM every process, SIGKILL what is left after ``grace_s``; returns the survivors (normally none)."""
        running = self.alive()
        for proc in running:
            _signal(proc, signal.SIGTERM)
        psutil.wait_procs(running, timeout=grace_s)
        # Repeat: a process may have started a child after the last scan and before its own kill.
        for _ in range(KILL_ROUNDS):
            left = self.alive()
            if not left:
                break
            for proc in left:
                _signal(proc, signal.SIGKILL)
            psutil.wait_procs(left, timeout=5.0)
        for item in self.started:
            try:
                item.popen.wait(timeout=5.0)  # reap, so no zombie is left behind either
            except subprocess.TimeoutExpired:
                pass
        return self.survivors()

    def survivors(self) -> list[str]:
        """"pid command" of every recorded or marked process still running."""
        return [f"{p.pid} {process_label(p)}" for p in self.alive()]

    def tails(self, lines: int = 25) -> str:
        """The last lines of every log, for an error message."""
        return "\n".join(f"--- {i.name} (pid {i.popen.pid}, exit {i.popen.poll()}): {i.log}\n{tail(i.log, lines)}" for i in self.started)


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)  # psutil checks the start time: a reused pid is not signalled
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass


def process_label(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline()[:3])
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "?"


def tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a text file ("" if it does not exist)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""
