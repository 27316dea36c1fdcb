"""A real Flower deployment on this machine: one SuperLink and N SuperNodes as separate processes.

``python -m federated.deploy run --nodes 3`` generates a certificate
authority and a server certificate for the loopback address, starts
``flower-superlink`` with TLS and N ``flower-supernode`` processes (node i
gets ``--node-config "partition-id=i num-partitions=N"``), submits the app
with ``flwr run`` against a connection profile in a private ``FLWR_HOME``,
waits for the server's results JSON, checks it and stops every process it
started by process id. ``python -m federated.deploy certs DIR --host H``
writes the same certificates for a SuperLink on another host.

Every process started here carries the environment variable
``DISTILLMEM_DEPLOYMENT`` set to a fresh token. Flower's own children
(``flower-superexec``, ``flwr-serverapp``, ``flwr-clientapp``) inherit it,
which is how they are found for shutdown even once re-parented; nothing
else is ever signalled.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import ipaddress
import json
import math
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .task import Config

#: The environment variable that marks every process of one deployment.
MARKER = "DISTILLMEM_DEPLOYMENT"
LOOPBACK = ("127.0.0.1", "localhost")
#: The connection profile name in the private FLWR_HOME's config.toml.
PROFILE = "deployment"
#: Settings for an offline run: no runtime `uv sync`, no telemetry, no update check.
OFFLINE_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
}
POLL_S = 0.5
#: Seconds between two `flwr list` status checks while waiting for the results.
STATUS_EVERY_S = 15.0


class DeploymentError(RuntimeError):
    """A deployment step failed; the message carries the processes' log tails."""


# -- certificates and keys ------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    """PEM files: the CA certificate the clients trust, the server's certificate and its private key."""

    ca: Path
    certificate: Path
    key: Path


def make_certificates(folder: str | os.PathLike, hosts: Sequence[str] = LOOPBACK, *, days: int = 30) -> Certificates:
    """A fresh CA (its key is discarded) and a server certificate whose SANs are ``hosts``.

    Writes ``ca.crt``, ``server.pem`` and ``server.key`` (mode 0600) into
    ``folder`` (created with mode 0700 if absent); refuses to overwrite any
    of them. A host that parses as an IP address becomes an IP SAN, any
    other a DNS SAN.
    """
    if not hosts or any(not isinstance(h, str) or not h.strip() for h in hosts):
        raise ValueError(f"hosts={list(hosts)!r}: give at least one non-empty host name or IP address")
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ValueError(f"days={days!r}: must be an integer >= 1")
    out = Path(folder)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = Certificates(out / "ca.crt", out / "server.pem", out / "server.key")
    existing = [str(p) for p in (files.ca, files.certificate, files.key) if p.exists()]
    if existing:
        raise FileExistsError(f"refusing to overwrite {existing}: choose an empty folder")

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "distillmem deployment CA")])
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    sans = [_san(h.strip()) for h in hosts]
    server = (
        _builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0].strip())]), ca_name, server_key.public_key(), now, days)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write_new(files.ca, ca.public_bytes(serialization.Encoding.PEM), 0o644)
    _write_new(files.certificate, server.public_bytes(serialization.Encoding.PEM), 0o644)
    _write_new(
        files.key,
        server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        0o600,
    )
    return files


def make_node_key(folder: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """A SuperNode authentication key pair (NIST P-384, OpenSSH format): (private 0600, public ``.pub``)."""
    out = Path(folder)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = out / name, out / f"{name}.pub"
    _write_new(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()), 0o600)
    _write_new(public, key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH), 0o644)
    return private, public


def _builder(subject: x509.Name, issuer: x509.Name, public_key: Any, now: datetime.datetime, days: int) -> x509.CertificateBuilder:
    # Back-dated by a minute so that a slightly slow clock on a node does not reject a fresh certificate.
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start (a private key is never readable by others), never overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)  # the umask may have narrowed it


# -- processes ----------------------------------------------------------------------


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
        """SIGTERM every process (last started first), SIGKILL what is left after ``grace_s``; returns survivors."""
        self.watch()
        tops = [psutil.Process(i.popen.pid) for i in reversed(self.started) if i.popen.poll() is None]
        rest = [p for p in self.alive() if p.pid not in {t.pid for t in tops}]
        for proc in tops + rest:
            _signal(proc, signal.SIGTERM)
        psutil.wait_procs(tops + rest, timeout=grace_s)
        for proc in self.alive():
            _signal(proc, signal.SIGKILL)
        psutil.wait_procs(self.alive(), timeout=5.0)
        for item in self.started:
            try:
                item.popen.wait(timeout=5.0)  # reap, so no zombie is left behind either
            except subprocess.TimeoutExpired:
                pass
        return [f"{p.pid} {_name(p)}" for p in self.alive()]

    def tails(self, lines: int = 25) -> str:
        """The last lines of every log, for an error message."""
        return "\n".join(f"--- {i.name} (pid {i.popen.pid}, exit {i.popen.poll()}): {i.log}\n{tail(i.log, lines)}" for i in self.started)


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)  # psutil checks the start time: a reused pid is not signalled
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass


def _name(proc: psutil.Process) -> str:
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


# -- the deployment -------------------------------------------------------------------


class LoopbackDeployment:
    """One SuperLink and ``num_nodes`` SuperNodes on loopback, running the federated app once.

    Use as a context manager: ``with LoopbackDeployment(workdir, 3) as dep:
    result = dep.run()``. ``config`` is the run's configuration
    (``num_clients`` must equal ``num_nodes``; default: the app's defaults
    with every node required). ``insecure=True`` turns TLS off (only where
    a user asks for it); ``supernode_auth=True`` starts the SuperLink with
    ``--enable-supernode-auth`` and registers one key pair per node.
    ``node_data`` is each node's ``data-path`` node-config entry. Every
    wait is bounded by ``timeout_s``; on failure the error carries the logs.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        num_nodes: int = 3,
        config: Config | None = None,
        *,
        insecure: bool = False,
        supernode_auth: bool = False,
        node_data: str = "",
        timeout_s: float = 600.0,
        grace_s: float = 10.0,
    ) -> None:
        if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or not 2 <= num_nodes <= 1000:
            raise ValueError(f"num_nodes={num_nodes!r}: must be an integer in [2, 1000]")
        if supernode_auth and insecure:
            raise ValueError("supernode_auth=True needs TLS: it cannot be combined with insecure=True")
        for key, value in (("timeout_s", timeout_s), ("grace_s", grace_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
                raise ValueError(f"{key}={value!r}: must be a finite number > 0")
        self.workdir = Path(workdir).resolve()
        if self.workdir.exists() and any(self.workdir.iterdir()):
            raise FileExistsError(f"workdir={str(self.workdir)!r} is not empty: a deployment writes certificates, logs and state there")
        self.num_nodes = num_nodes
        self.results_path = self.workdir / "results.json"
        base = config if config is not None else Config(num_clients=num_nodes, min_clients=num_nodes)
        if base.num_clients != num_nodes:
            raise ValueError(f"num-clients={base.num_clients} in the config, but num_nodes={num_nodes}")
        self.config = Config.from_mapping({**base.to_mapping(), "results-path": str(self.results_path)})
        self.insecure = insecure
        self.supernode_auth = supernode_auth
        self.node_data = node_data
        self.timeout_s = float(timeout_s)
        self.grace_s = float(grace_s)
        self.processes = ProcessSet()
        self.certificates: Certificates | None = None
        self.port = 0
        self.node_ports: list[int] = []
        self.run_id: str | None = None
        self._stopped = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> "LoopbackDeployment":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        survivors = self.stop()
        if survivors and exc[0] is None:
            raise DeploymentError(f"processes survived SIGKILL: {survivors}")

    def start(self) -> None:
        """Certificates, the SuperLink (once it accepts connections), the CLI profile and the SuperNodes."""
        atexit.register(self.stop)
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for sub in ("logs", "superlink", "cli"):
            (self.workdir / sub).mkdir(mode=0o700, exist_ok=True)
        if not self.insecure:
            self.certificates = make_certificates(self.workdir / "certs")
        self.port = free_port()
        link = [executable("flower-superlink"), "--host", "127.0.0.1", "--port", str(self.port), "--disable-runtime-dependency-installation"]
        link += self._tls_server_args()
        if self.supernode_auth:
            link.append("--enable-supernode-auth")
        self.processes.start("superlink", link, self._env(self.workdir / "superlink"), self.workdir / "logs" / "superlink.log", self.workdir)
        self._wait_listening()
        self._write_profile()
        keys = [self._register_node(i) for i in range(self.num_nodes)] if self.supernode_auth else [None] * self.num_nodes
        for i, key in enumerate(keys):
            self.start_supernode(i, key)

    def start_supernode(self, index: int, private_key: Path | None = None) -> subprocess.Popen:
        """SuperNode ``index`` (partition ``index``) with its own FLWR_HOME, Runtime API port and node-config.

        ``private_key`` is its authentication key (OpenSSH format), if any.
        """
        home = self.workdir / f"supernode-{index}"
        home.mkdir(mode=0o700, exist_ok=True)
        port = free_port()
        self.node_ports.append(port)
        node_config = f"partition-id={index} num-partitions={self.num_nodes}"
        if self.node_data:
            node_config += f" data-path={json.dumps(self.node_data)}"
        argv = [executable("flower-supernode"), "--superlink", self.address, "--port", str(port), "--node-config", node_config]
        argv += ["--insecure"] if self.insecure else ["--root-certificates", str(self.certificates.ca)]
        if private_key is not None:
            argv += ["--auth-supernode-private-key", str(private_key)]
        log = self.workdir / "logs" / f"supernode-{index}.log"
        return self.processes.start(f"supernode-{index}", argv, self._env(home), log, self.workdir)

    def stop(self) -> list[str]:
        """Stop every process of the deployment by process id; returns those that survived (normally none)."""
        if self._stopped:
            return [f"{p.pid} {_name(p)}" for p in self.processes.alive()]
        self._stopped = True
        atexit.unregister(self.stop)
        return self.processes.stop(self.grace_s)

    # -- the run ---------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Submit the app with ``flwr run``, wait for the server's results JSON, check and return it."""
        app = self._stage_app()
        reply = self.flwr(["run", str(app), PROFILE])
        if not reply.get("run-id"):
            raise DeploymentError(f"flwr run returned no run id: {reply}\n{self.processes.tails()}")
        self.run_id = str(reply["run-id"])
        result = self._wait_for_results()
        check_results(result, self.num_nodes)
        return result

    def flwr(self, args: list[str], timeout_s: float = 180.0) -> dict[str, Any]:
        """Run ``flwr <args> --format json`` against this deployment's profiles; its JSON reply, or DeploymentError."""
        command = [executable("flwr"), *args, "--format", "json"]
        try:
            done = subprocess.run(
                command, env={**self._env(self.workdir / "cli"), MARKER: self.processes.token},
                capture_output=True, text=True, timeout=timeout_s, cwd=self.workdir, stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise DeploymentError(f"flwr {' '.join(args)} did not finish in {timeout_s:.0f} s\n{self.processes.tails()}") from None
        try:
            reply = json.loads(done.stdout)
        except json.JSONDecodeError:
            reply = {}
        # With --format json a failure may still exit with status 0: the reply says "success": false.
        if done.returncode != 0 or not isinstance(reply, dict) or reply.get("success") is not True:
            raise DeploymentError(
                f"flwr {' '.join(args)} failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}\n{self.processes.tails()}"
            )
        return reply

    def run_status(self) -> str:
        """The run's status from the SuperLink, e.g. "running" or "finished:completed"."""
        runs = self.flwr(["list", PROFILE, "--run-id", str(self.run_id)]).get("runs", [])
        return str(runs[0]["status"]) if runs else "unknown"

    def _wait_for_results(self) -> dict[str, Any]:
        end = time.monotonic() + self.timeout_s
        next_status = time.monotonic() + STATUS_EVERY_S
        while time.monotonic() < end:
            if self.results_path.exists():  # written atomically by the ServerApp
                return json.loads(self.results_path.read_text())
            self.processes.watch()
            dead = self.processes.dead()
            if dead:
                raise DeploymentError(f"{[d.name for d in dead]} exited before the results were written\n{self.processes.tails()}")
            if time.monotonic() >= next_status:
                status = self.run_status()
                if status.startswith("finished") and not self.results_path.exists():
                    raise DeploymentError(f"run {self.run_id} is {status} without results\n{self.processes.tails()}")
                next_status = time.monotonic() + STATUS_EVERY_S
            time.sleep(POLL_S)
        raise DeploymentError(f"no results after {self.timeout_s:.0f} s (run {self.run_id})\n{self.processes.tails()}")

    # -- internals ---------------------------------------------------------------------
    def _env(self, home: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.update(OFFLINE_ENV)
        env["FLWR_HOME"] = str(home)
        # flower-superlink and flower-supernode start flower-superexec by name: the same environment's.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def _tls_server_args(self) -> list[str]:
        if self.insecure:
            return ["--insecure"]
        c = self.certificates
        return ["--ssl-ca-certfile", str(c.ca), "--ssl-certfile", str(c.certificate), "--ssl-keyfile", str(c.key)]

    def _wait_listening(self) -> None:
        """Until the SuperLink accepts a TCP connection (and completes a TLS handshake with our CA)."""
        end = time.monotonic() + self.timeout_s
        while time.monotonic() < end:
            if self.processes.dead():
                raise DeploymentError(f"the SuperLink exited at start-up\n{self.processes.tails()}")
            try:
                if self.insecure:
                    socket.create_connection(("127.0.0.1", self.port), timeout=2.0).close()
                else:
                    tls_handshake("127.0.0.1", self.port, self.certificates.ca)
                return
            except (OSError, ssl.SSLError):
                time.sleep(POLL_S)
        raise DeploymentError(f"the SuperLink did not listen on {self.address} within {self.timeout_s:.0f} s\n{self.processes.tails()}")

    def _write_profile(self) -> None:
        profile: dict[str, Any] = {"address": self.address}
        if self.insecure:
            profile["insecure"] = True
        else:
            profile["root-certificates"] = str(self.certificates.ca)
        text = tomli_w.dumps({"superlink": {"default": PROFILE, PROFILE: profile}})
        (self.workdir / "cli" / "config.toml").write_text(text)

    def _register_node(self, index: int) -> Path:
        private, public = make_node_key(self.workdir / "keys", f"supernode-{index}")
        self.flwr(["supernode", "register", str(public), PROFILE])
        return private

    def _stage_app(self) -> Path:
        """The app bundle's folder: this package's modules and a pyproject.toml with the run's config."""
        app = self.workdir / "app"
        (app / "federated").mkdir(parents=True)
        for module in Path(__file__).parent.glob("*.py"):
            shutil.copy2(module, app / "federated" / module.name)
        project = {
            "build-system": {"requires": ["setuptools>=68"], "build-backend": "setuptools.build_meta"},
            "project": {"name": "distillmem-federated", "version": "1.0.0", "dependencies": []},
            "tool": {
                "flwr": {
                    "app": {
                        "publisher": "distillmem",
                        "components": {"serverapp": "federated.server_app:app", "clientapp": "federated.client_app:app"},
                        "config": self.config.to_mapping(),
                    }
                }
            },
        }
        (app / "pyproject.toml").write_text(tomli_w.dumps(project))
        return app


def tls_handshake(host: str, port: int, ca: Path | None, server_hostname: str | None = None) -> None:
    """Complete a TLS handshake verifying the server against ``ca`` (None: the system's trust store)."""
    context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    with socket.create_connection((host, port), timeout=5.0) as sock:
        with context.wrap_socket(sock, server_hostname=server_hostname or host):
            pass


def check_results(result: dict[str, Any], num_nodes: int) -> None:
    """Raise DeploymentError unless every node's upload was accepted and each partition came exactly once."""
    clients = result.get("clients", {})
    problems = []
    if len(clients.get("accepted", [])) != num_nodes:
        problems.append(f"{len(clients.get('accepted', []))} of {num_nodes} uploads accepted")
    if clients.get("rejected"):
        problems.append(f"rejected: {clients['rejected']}")
    if clients.get("missing"):
        problems.append(f"missing: {clients['missing']}")
    partitions = sorted(clients.get("partitions", {}).values())
    if partitions != list(range(num_nodes)):
        problems.append(f"partitions {partitions}, expected each of 0..{num_nodes - 1} once")
    accuracy = result.get("accuracy")
    if not isinstance(accuracy, float) or not 0.0 <= accuracy <= 1.0:
        problems.append(f"accuracy {accuracy!r} is not a share in [0, 1]")
    if problems:
        raise DeploymentError("the deployment's results are wrong: " + "; ".join(problems))


def deploy(num_nodes: int = 3, config: Config | None = None, *, workdir: str | os.PathLike | None = None, **options: Any) -> dict[str, Any]:
    """Start, run once, check and stop a loopback deployment; returns the server's results.

    ``options`` go to LoopbackDeployment. Without ``workdir`` a temporary
    folder is used and removed afterwards.
    """
    if workdir is not None:
        with LoopbackDeployment(workdir, num_nodes, config, **options) as dep:
            return dep.run()
    with tempfile.TemporaryDirectory(prefix="distillmem-deploy-") as tmp:
        with LoopbackDeployment(tmp, num_nodes, config, **options) as dep:
            return dep.run()


# -- command line -----------------------------------------------------------------------


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m federated.deploy", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="a loopback deployment: SuperLink, N SuperNodes, one run, then stop")
    run.add_argument("--nodes", type=int, default=3, help="number of SuperNodes (= num-clients), default 3")
    run.add_argument("--run-config", default="", help='run-config overrides, e.g. "mode=\'sketch\' max-points=20"')
    run.add_argument("--data", default="", help="data file or folder (data-path of the server and of every node)")
    run.add_argument("--workdir", default=None, help="an empty or new folder for certificates, logs and results (kept)")
    run.add_argument("--insecure", action="store_true", help="plain HTTP instead of TLS (never across a network)")
    run.add_argument("--supernode-auth", action="store_true", help="register one key per SuperNode; unknown nodes are refused")
    run.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for each step (default 600)")
    certs = commands.add_parser("certs", help="write a CA and a server certificate for a SuperLink")
    certs.add_argument("folder", help="an empty or new folder")
    certs.add_argument("--host", action="append", required=True, help="a name or IP address the nodes connect to (repeat)")
    certs.add_argument("--days", type=int, default=365)
    args = parser.parse_args(argv)

    if args.command == "certs":
        files = make_certificates(args.folder, args.host, days=args.days)
        print(f"wrote {files.ca} (give it to every SuperNode and CLI), {files.certificate} and {files.key} (SuperLink only)")
        return 0

    from flwr.common.config import parse_config_args

    overrides = parse_config_args([args.run_config]) if args.run_config else {}
    mapping = {"num-clients": args.nodes, "min-clients": args.nodes, **overrides}
    if args.data:
        mapping["data-path"] = args.data
    config = Config.from_mapping(mapping)
    signal.signal(signal.SIGTERM, _raise_exit)
    workdir = args.workdir or tempfile.mkdtemp(prefix="distillmem-deploy-")
    start = time.monotonic()
    dep = LoopbackDeployment(
        workdir, args.nodes, config, insecure=args.insecure, supernode_auth=args.supernode_auth, node_data=args.data, timeout_s=args.timeout
    )
    transport = "plain HTTP (--insecure)" if args.insecure else "TLS"
    try:
        with dep:
            print(f"superlink  {dep.address} ({transport}{', SuperNode authentication' if args.supernode_auth else ''}), {args.nodes} supernodes")
            result = dep.run()
    except (DeploymentError, KeyboardInterrupt, SystemExit) as err:
        print(f"deployment failed or interrupted; every process stopped; logs kept in {dep.workdir}", file=sys.stderr)
        if isinstance(err, DeploymentError):
            print(err, file=sys.stderr)
            return 1
        raise
    line = f"accuracy   {result['accuracy']:.4f}"
    if "centralized_accuracy" in result:
        line += f" (centralized KRR {result['centralized_accuracy']:.4f}, weight error {result['weight_error']:.2e})"
    print(line)
    print(f"uploads    {len(result['clients']['accepted'])} accepted, {result['total_upload_bytes']} bytes in total")
    print(f"time       {time.monotonic() - start:.1f} s from start to stop (server round {result['wall_time_s']:.1f} s)")
    print(f"results    {dep.results_path}; every process stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
