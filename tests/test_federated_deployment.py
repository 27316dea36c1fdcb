"""A real deployment on loopback: a TLS SuperLink and three SuperNodes as processes, stopped by process id.

The deployment tests are marked ``deployment`` (select with ``-m deployment``;
CI runs them). The certificate and argument checks below them start nothing.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from federated import Config, simulate
from federated.deploy import (
    DeploymentError,
    LoopbackDeployment,
    check_results,
    make_certificates,
    make_node_key,
    marked_processes,
    node_config,
    tls_handshake,
)
from federated.deploy.cli import main

RUN = dict(num_clients=3, partition="dirichlet", alpha=0.5, mode="moments", reg=1.0, seed=0, deadline_s=300.0, min_clients=3)
#: Generous: on a loaded 2-core machine one run took about a minute.
TIMEOUT_S = 600.0


def _processes_of(workdir: Path) -> list[psutil.Process]:
    """Processes whose FLWR_HOME lies in ``workdir``: every one a deployment there started, children included."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("FLWR_HOME", "").startswith(str(workdir)) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _by_partition(result: dict) -> dict[int, int]:
    """Upload bytes keyed by partition id (node ids differ between engines)."""
    partitions = result["clients"]["partitions"]
    return {partitions[node]: nbytes for node, nbytes in result["upload_bytes_by_node"].items()}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """One TLS deployment with SuperNode authentication, run once; stopped at the end of the module.

    (The command-line test below runs the default, TLS without authentication.)
    """
    dep = LoopbackDeployment(tmp_path_factory.mktemp("deployment"), 3, Config(**RUN), supernode_auth=True, timeout_s=TIMEOUT_S)
    try:
        dep.start()
        result = dep.run()
        yield dep, result
    finally:
        dep.stop()


@pytest.mark.deployment
def test_tls_deployment_gives_the_in_process_head(deployment):
    dep, result = deployment
    local = simulate(engine="inprocess", **RUN)
    assert result["accuracy"] == local["accuracy"]
    assert result["centralized_accuracy"] == local["centralized_accuracy"]
    assert result["weight_error"] < 1e-9  # moments uploads give pooled KRR
    assert result["n_samples"] == local["n_samples"]
    # Each node read its own partition: node i reported partition i, and each upload's size is that partition's.
    assert _by_partition(result) == _by_partition(local)
    assert result["total_upload_bytes"] == local["total_upload_bytes"]
    assert dep.results_path.is_file()
    # The ServerApp writes its results before the SuperLink marks the run finished: wait for that, bounded.
    end = time.monotonic() + 60
    while (status := dep.run_status()) == "running" and time.monotonic() < end:
        time.sleep(0.5)
    assert status == "finished:completed"


@pytest.mark.deployment
def test_clients_need_the_ca_and_the_right_name(deployment):
    dep, _ = deployment
    nodes = [p.cmdline() for p in dep.processes.alive() if "flower-supernode" in " ".join(p.cmdline()[:2])]
    assert len(nodes) == 3 and all("--insecure" not in argv and str(dep.certificates.ca) in argv for argv in nodes)
    tls_handshake("127.0.0.1", dep.port, dep.certificates.ca)
    tls_handshake("127.0.0.1", dep.port, dep.certificates.ca, server_hostname="localhost")
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_handshake("127.0.0.1", dep.port, None)  # the system's trust store does not know our CA
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_handshake("127.0.0.1", dep.port, dep.certificates.ca, server_hostname="superlink.example.org")
    other = make_certificates(dep.workdir / "other-ca")
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_handshake("127.0.0.1", dep.port, other.ca)
    # The flwr CLI with a profile that lacks the CA cannot reach the SuperLink; the deployment's profile can.
    config = dep.workdir / "cli" / "config.toml"
    config.write_text(config.read_text() + f'\n[superlink.no-ca]\naddress = "{dep.address}"\n')
    with pytest.raises(DeploymentError, match="unavailable"):
        dep.flwr(["list", "no-ca"])
    assert dep.flwr(["list", "deployment"])["runs"]


@pytest.mark.deployment
def test_an_unregistered_supernode_is_refused(deployment):
    dep, _ = deployment
    registered = dep.flwr(["supernode", "list", "deployment"])["nodes"]
    assert [node["status"] for node in registered] == ["online"] * 3
    key, _ = make_node_key(dep.workdir / "keys", "intruder")
    intruder = dep.start_supernode(3, key)
    try:
        code = intruder.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"an unregistered SuperNode was not refused:\n{dep.processes.tails()}")
    assert code != 0
    assert "Failed to activate SuperNode" in (dep.workdir / "logs" / "supernode-3.log").read_text()
    assert len(dep.flwr(["supernode", "list", "deployment"])["nodes"]) == 3


@pytest.mark.deployment
def test_stop_leaves_no_process(deployment):
    dep, _ = deployment
    seen = list(dep.processes.seen.values())
    # The SuperLink, the SuperNodes and Flower's own children of theirs were all tracked.
    commands = set()
    for proc in seen:
        try:
            commands.add(os.path.basename(proc.cmdline()[1]))
        except (psutil.NoSuchProcess, psutil.ZombieProcess, IndexError):
            continue
    assert {"flower-superlink", "flower-supernode", "flower-superexec"} <= commands, commands
    assert dep.stop() == []
    for proc in seen:
        assert not (proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE), f"{proc.pid} still running"
    assert marked_processes(dep.processes.token) == []
    left = subprocess.run(["pgrep", "-f", str(dep.workdir)], capture_output=True, text=True, check=False).stdout.split()
    assert left == [], f"processes naming {dep.workdir} left: {left}"


@pytest.mark.deployment
def test_insecure_only_when_asked_speaks_plain_http(tmp_path):
    with LoopbackDeployment(tmp_path / "plain", 2, insecure=True, timeout_s=TIMEOUT_S) as dep:
        assert dep.certificates is None and not (dep.workdir / "certs").exists()
        assert 'insecure = true' in (dep.workdir / "cli" / "config.toml").read_text()
        with pytest.raises(ssl.SSLError):
            tls_handshake("127.0.0.1", dep.port, None)
        assert dep.flwr(["list", "deployment"])["success"]
        nodes = [p.cmdline() for p in dep.processes.alive() if "flower-supernode" in " ".join(p.cmdline()[:2])]
        assert len(nodes) == 2 and all("--insecure" in argv and "--root-certificates" not in argv for argv in nodes)
    assert _processes_of(dep.workdir) == []


@pytest.mark.deployment
def test_ctrl_c_during_the_run_stops_every_process(tmp_path):
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "federated.deploy", "run", "--nodes", "3", "--workdir", str(workdir)]
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        end = time.monotonic() + TIMEOUT_S
        # Interrupt once the run is under way: the ServerApp process exists.
        while not any("flwr-serverapp" in " ".join(p.cmdline()) for p in _processes_of(workdir)):
            assert proc.poll() is None, f"the deployment ended early:\n{proc.stdout.read()}"
            assert time.monotonic() < end, "the run did not start"
            time.sleep(0.5)
        started = _processes_of(workdir)
        assert len(started) >= 5, [p.cmdline()[1:2] for p in started]  # the SuperLink, three SuperNodes, the ServerApp, ...
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 130, out
        assert "interrupted; every process it started was stopped" in out
        left = [(p.pid, p.cmdline()[1:2]) for p in _processes_of(workdir)]
        assert left == [], out
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in started), out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        for left in _processes_of(workdir):  # only on failure: processes this test started, by pid
            left.kill()


# -- without processes --------------------------------------------------------------


def test_certificates_name_the_loopback_address_and_keep_the_key_private(tmp_path):
    files = make_certificates(tmp_path / "certs", ["127.0.0.1", "localhost", "superlink.example.org"])
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    server = x509.load_pem_x509_certificate(files.certificate.read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "superlink.example.org"]
    assert server.issuer == ca.subject
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "certs").stat().st_mode) == 0o700
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        make_certificates(tmp_path / "certs")
    for hosts in ([], "localhost", ["127.0.0.1", " "]):
        with pytest.raises(ValueError, match="hosts="):
            make_certificates(tmp_path / "none", hosts)


def test_node_keys_are_nist_ec_in_openssh_format(tmp_path):
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    private, public = make_node_key(tmp_path, "node")
    key = load_ssh_private_key(private.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert load_ssh_public_key(public.read_bytes()).public_numbers() == key.public_key().public_numbers()
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_bad_arguments_are_refused_before_anything_starts(tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("a user's file")
    with pytest.raises(FileExistsError, match="not empty"):
        LoopbackDeployment(tmp_path / "used", 3)
    with pytest.raises(ValueError, match="num-clients=10"):
        LoopbackDeployment(tmp_path / "a", 3, Config())
    with pytest.raises(ValueError, match="num_nodes=1"):
        LoopbackDeployment(tmp_path / "b", 1)
    with pytest.raises(ValueError, match="needs TLS"):
        LoopbackDeployment(tmp_path / "c", 3, insecure=True, supernode_auth=True)
    with pytest.raises(ValueError, match="timeout_s=0"):
        LoopbackDeployment(tmp_path / "d", 3, timeout_s=0)
    with pytest.raises(ValueError, match="single quote"):
        LoopbackDeployment(tmp_path / "e", 3, node_data="/data/o'brien.npz")
    with pytest.raises(TypeError, match="federated.Config"):
        LoopbackDeployment(tmp_path / "f", 3, {"num-clients": 3})
    assert (tmp_path / "used" / "keep.txt").read_text() == "a user's file"
    assert not any((tmp_path / n).exists() for n in "abcdef")


def test_a_superlink_that_dies_at_start_up_fails_with_its_log(tmp_path, monkeypatch):
    import federated.deploy.loopback as loopback

    fake = tmp_path / "flower-superlink"
    fake.write_text("#!/bin/sh\necho 'cannot bind: the port is taken'\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(loopback, "executable", lambda name: str(fake))
    dep = LoopbackDeployment(tmp_path / "w", 2, timeout_s=60)
    with pytest.raises(DeploymentError, match="exited at start-up") as err:
        with dep:
            pytest.fail("the deployment started")
    assert "cannot bind: the port is taken" in str(err.value) and "exit 3" in str(err.value)
    assert dep.processes.survivors() == [] and len(dep.processes.started) == 1


def test_node_config_gives_each_node_its_partition_and_data():
    from flwr.common.config import parse_config_args

    assert parse_config_args([node_config(2, 5)]) == {"partition-id": 2, "num-partitions": 5}
    path = r"/data/my silo\mnist.npz"
    assert parse_config_args([node_config(0, 3, path)]) == {"partition-id": 0, "num-partitions": 3, "data-path": path}
    with pytest.raises(ValueError, match="single quote"):
        node_config(0, 3, "/data/o'brien.npz")


def test_run_command_refuses_bad_arguments_in_one_line(tmp_path, capsys):
    workdir = tmp_path / "w"
    assert main(["run", "--nodes", "3", "--run-config", "num-clients=4", "--workdir", str(workdir)]) == 2
    assert main(["run", "--nodes", "3", "--run-config", "mode='bogus'"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: num-clients=4 in the config, but num_nodes=3", err[1]] and err[1].startswith("error: mode='bogus'")
    assert not workdir.exists() or not any(workdir.iterdir())


def test_check_results_names_what_is_wrong():
    good = {"accuracy": 0.9, "clients": {"accepted": [5, 6], "rejected": {}, "missing": [], "partitions": {"5": 1, "6": 0}}}
    check_results(good, 2)
    cases = [
        ({"accepted": [5]}, "1 of 2 uploads accepted"),
        ({"rejected": {"7": "NaN"}}, "rejected"),
        ({"missing": [7]}, "missing"),
        ({"partitions": {"5": 1, "6": 1}}, "partitions"),
    ]
    for change, message in cases:
        with pytest.raises(DeploymentError, match=message):
            check_results({**good, "clients": {**good["clients"], **change}}, 2)
    with pytest.raises(DeploymentError, match="accuracy"):
        check_results({**good, "accuracy": float("nan")}, 2)


def test_certs_command_writes_the_files(tmp_path, capsys):
    assert main(["certs", str(tmp_path / "c"), "--host", "10.1.2.3", "--host", "link.example.org", "--days", "2"]) == 0
    server = x509.load_pem_x509_certificate((tmp_path / "c" / "server.pem").read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    assert sans.get_values_for_type(x509.DNSName) == ["link.example.org"]
    assert abs((server.not_valid_after_utc - server.not_valid_before_utc).total_seconds() - (2 * 86400 + 60)) < 5
    assert "ca.crt" in capsys.readouterr().out
