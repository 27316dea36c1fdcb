"""Federated learning on distilled uploads: a Flower app whose server fits KRR heads.

``simulate`` runs the app (``client_app.app`` and the ServerApp of
``server_app``) on Flower's Simulation Engine or in this process, and returns
the server's results with its fitted ``distillmem.KRR`` head. This package
depends on ``distillmem`` and flwr; ``distillmem`` never imports it.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from .task import Config

__all__ = ["Config", "simulate", "simulate_fedavg"]

ENGINES = ("ray", "inprocess")


def simulate(
    dataset: str = "digits",
    data: str | None = None,
    *,
    num_clients: int = 10,
    partition: str = "dirichlet",
    alpha: float = 0.5,
    mode: str = "moments",
    feature_map: str = "fcnn",
    reg: float | str = 1.0,
    seed: int = 0,
    engine: str = "ray",
    client_app: Any = None,
    ray_temp_dir: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run one federated round and return the server's results.

    ``options`` are the other run-config keys in snake case (``ipc``,
    ``max_points``, ``classes_per_client``, ``reg_select``, ``val_fraction``,
    ``rounds``, ``deadline_s``, ``min_clients``, ``centralized``,
    ``results_path``, ``feature_seed``, and ``dp_epsilon``, ``dp_delta``,
    ``dp_clip`` for differential privacy, see ``federated.privacy``). ``engine="ray"`` uses Flower's
    Simulation Engine (one CPU per client, two CPUs in all);
    ``"inprocess"`` runs the same apps in threads of this process, for speed;
    both give the same head. ``client_app`` replaces the project's ClientApp
    (for instance one wrapped in mods). Returns a dict with ``head`` (the
    fitted distillmem.KRR), ``accuracy``, ``centralized_accuracy``,
    ``weight_error``, ``reg``, ``upload_bytes`` (one entry per client that
    answered), ``total_upload_bytes``, ``clients`` ({"accepted", "rejected":
    {node: reason}, "missing", ...}), ``refinement`` (one entry per round), ``privacy`` (epsilon, delta, the
    bound B, sigma and what the guarantee covers, or {"enabled": False}) and
    ``wall_time_s`` (the server's run without the centralized reference fit,
    which ``centralized_time_s`` reports).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: must be one of {ENGINES}")
    cfg = Config(
        dataset=dataset, data_path=data or "", num_clients=num_clients, partition=partition, alpha=alpha, mode=mode,
        feature_map=feature_map, reg=reg, seed=seed, **options,
    )
    if client_app is None:
        from .client_app import app as client_app
    from .server_app import server_app

    return _run(lambda sink: server_app(cfg, sink), client_app, cfg, engine, ray_temp_dir)


def simulate_fedavg(
    dataset: str = "digits",
    data: str | None = None,
    *,
    num_clients: int = 10,
    partition: str = "dirichlet",
    alpha: float = 0.5,
    feature_map: str = "fcnn",
    seed: int = 0,
    rounds: int = 20,
    local_epochs: int = 1,
    lr: float = 0.1,
    batch_size: int = 64,
    momentum: float = 0.0,
    loss: str = "cross_entropy",
    hidden: int = 0,
    engine: str = "ray",
    ray_temp_dir: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The FedAvg baseline through Flower's own ``FedAvg`` strategy, on the same partitions and features as ``simulate``.

    ``fedavg_client_app`` trains the head (linear, or an MLP with ``hidden``
    units) locally; ``fedavg_server_app`` runs the strategy for ``rounds``
    rounds with every node every round. ``options`` are other run-config keys
    (``feature_seed``, ``deadline_s``, ``results_path``, ...). Equals
    ``federated.fedavg.FedAvg`` with the same settings and seed on the
    clients' partitions, up to float rounding. Returns ``accuracy`` (test
    accuracy after each round), ``initial_accuracy``, ``train_loss``,
    ``upload_bytes_per_round`` (one node's model), ``nodes``,
    ``wall_time_s`` and ``model`` (the global torch module).
    """
    from .fedavg import check_settings
    from .fedavg_client_app import app as client_app
    from .fedavg_server_app import fedavg_server_app

    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: must be one of {ENGINES}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds={rounds!r}: must be an integer >= 1")
    cfg = Config(dataset=dataset, data_path=data or "", num_clients=num_clients, partition=partition, alpha=alpha,
                 feature_map=feature_map, seed=seed, **options)
    settings = dict(local_epochs=local_epochs, lr=lr, batch_size=batch_size, momentum=momentum, loss=loss, hidden=hidden)
    check_settings(settings)
    return _run(lambda sink: fedavg_server_app(cfg, settings, rounds, sink), client_app, cfg, engine, ray_temp_dir)


def _run(make_server: Any, client_app: Any, cfg: Config, engine: str, ray_temp_dir: str | None) -> dict[str, Any]:
    """Run the ServerApp that ``make_server(sink)`` builds with ``client_app`` on ``engine``; its results dict."""
    results: list[dict[str, Any]] = []
    server = make_server(results.append)
    if engine == "inprocess":
        _run_inprocess(server, client_app, cfg)
    else:
        _run_ray(server, client_app, cfg, ray_temp_dir)
    if not results:
        raise RuntimeError("the ServerApp finished without results")
    return results[0]


def _run_inprocess(server: Any, client_app: Any, cfg: Config) -> None:
    from flwr.app import Context, RecordDict

    from .inprocess import InProcessGrid, task_identity

    grid = InProcessGrid(client_app, cfg.num_clients)
    try:
        with task_identity(grid.run_id):
            server(grid, Context(run_id=grid.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    finally:
        grid.close()


def _run_ray(server: Any, client_app: Any, cfg: Config, temp_dir: str | None) -> None:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from flwr.simulation import run_simulation

    backend = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        # Ray's default temp dir may be on a small /tmp; a short path keeps its socket names valid.
        "init_args": {"num_cpus": 2, "_temp_dir": temp_dir or os.path.join(tempfile.gettempdir(), "distillmem-ray")},
    }
    run_simulation(server_app=server, client_app=client_app, num_supernodes=cfg.num_clients, backend_config=backend)
