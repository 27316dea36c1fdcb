"""A loopback deployment: one SuperLink and N SuperNodes as processes, one run of the app, then stop."""

from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import tomli_w

from ..local_run import OFFLINE_ENV
from ..task import Config
from .certs import Certificates, make_certificates, make_node_key
from .processes import MARKER, DeploymentError, ProcessSet, executable, free_port

#: The connection profile name in the private FLWR_HOME's config.toml.
PROFILE = "deployment"
POLL_S = 0.5
#: Seconds between two `flwr list` status checks while waiting for the results.
STATUS_EVERY_S = 15.0


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
    ``stop`` runs on leaving the block (error and Ctrl-C included) and at
    interpreter exit; a program that may receive SIGTERM should turn it into
    SystemExit, as ``python -m federated.deploy`` does.
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
        if config is not None and not isinstance(config, Config):
            raise TypeError(f"config={config!r}: must be a federated.Config")
        node_config(0, num_nodes, node_data)  # refuses a data path the node-config cannot carry
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
        argv = [executable("flower-supernode"), "--superlink", self.address, "--port", str(free_port())]
        argv += ["--node-config", node_config(index, self.num_nodes, self.node_data)]
        argv += ["--insecure"] if self.insecure else ["--root-certificates", str(self.certificates.ca)]
        if private_key is not None:
            argv += ["--auth-supernode-private-key", str(private_key)]
        log = self.workdir / "logs" / f"supernode-{index}.log"
        return self.processes.start(f"supernode-{index}", argv, self._env(home), log, self.workdir)

    def stop(self) -> list[str]:
        """Stop every process of the deployment by process id; returns those that survived (normally none)."""
        if self._stopped:
            return self.processes.survivors()
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
            except ssl.SSLError as err:  # listening, but not with TLS or with a certificate our CA does not accept
                raise DeploymentError(f"TLS with the SuperLink failed: {err}\n{self.processes.tails()}") from None
            except OSError:  # not listening yet
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
        # The app is the federated package's Python files; distillmem and flwr are installed on every node.
        shutil.copytree(Path(__file__).parents[1], app / "federated", ignore=_not_python)
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


def _not_python(folder: str, names: list[str]) -> list[str]:
    """For shutil.copytree: skip everything but Python files and the folders that hold them."""
    return [n for n in names if n == "__pycache__" or not (n.endswith(".py") or (Path(folder) / n).is_dir())]


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


def node_config(partition_id: int, num_partitions: int, data_path: str = "") -> str:
    """A SuperNode's ``--node-config`` value: its partition and, if given, its own data path."""
    text = f"partition-id={partition_id} num-partitions={num_partitions}"
    if data_path:
        # A TOML literal string: the path is taken verbatim, backslashes and spaces included.
        if "'" in data_path or "\n" in data_path:
            raise ValueError(f"data_path={data_path!r}: a node-config path cannot contain a single quote or a newline")
        text += f" data-path='{data_path}'"
    return text
