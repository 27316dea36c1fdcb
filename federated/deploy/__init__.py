"""A real Flower deployment on this machine: one SuperLink and N SuperNodes as separate processes.

``python -m federated.deploy run --nodes 3`` generates a certificate
authority and a server certificate for the loopback address, starts
``flower-superlink`` with TLS and N ``flower-supernode`` processes (node i
gets ``--node-config "partition-id=i num-partitions=N"``), submits the app
with ``flwr run`` against a connection profile in a private ``FLWR_HOME``,
waits for the server's results JSON, checks it and stops every process it
started by process id. ``python -m federated.deploy certs DIR --host H``
writes the same certificates for a SuperLink on another host.
"""

from .certs import Certificates, make_certificates, make_node_key
from .loopback import LoopbackDeployment, check_results, node_config, tls_handshake
from .processes import DeploymentError, ProcessSet, marked_processes

__all__ = [
    "Certificates",
    "DeploymentError",
    "LoopbackDeployment",
    "ProcessSet",
    "check_results",
    "make_certificates",
    "make_node_key",
    "marked_processes",
    "node_config",
    "tls_handshake",
]
