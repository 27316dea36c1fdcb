"""The FedAvg baseline's ServerApp: Flower's own ``FedAvg`` strategy training a head on the frozen features.

The global model starts as ``federated.fedavg.make_module`` seeded with the
run's seed; every round all connected nodes run ``fedavg_client_app`` and
the strategy averages their models weighted by "num-examples". The server
scores the global model on its test split before round 1 and after each
round. Results: the accuracy after each round, the bytes each node uploads
per round (its model, as Flower serialises it), the nodes connected at the
start, and the wall time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from .features import head_arrays
from .fedavg import features, make_module, settings_config
from .server_app import wait_for_nodes
from .task import Config, make_feature_map, write_json_atomic

logger = logging.getLogger("flwr")


def fedavg_server_app(cfg: Config, settings: dict[str, Any], rounds: int,
                      sink: Callable[[dict[str, Any]], None] | None = None) -> ServerApp:
    """A ServerApp running ``run_fedavg``; ``sink`` receives its results in this process."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        result = run_fedavg(grid, cfg, settings, rounds)
        if sink is not None:
            sink(result)

    return app


def run_fedavg(grid: Grid, cfg: Config, settings: dict[str, Any], rounds: int) -> dict[str, Any]:
    """``rounds`` rounds of Flower's FedAvg with full participation; returns the results dict (``model`` included)."""
    start = time.monotonic()
    data = head_arrays(cfg, cfg.data_path)
    phi_test = features(make_feature_map(cfg, data.x_train.shape[1]), data.x_test)
    y_test = torch.as_tensor(data.y_test)
    model = make_module(phi_test.shape[1], data.n_classes, settings["hidden"], cfg.seed)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        with torch.no_grad():
            correct = (model(phi_test).argmax(1) == y_test).double().mean()
        return MetricRecord({"accuracy": float(correct)})

    nodes = wait_for_nodes(grid, cfg.num_clients, cfg.deadline_s)
    logger.info("fedavg: %d of %d nodes connected, %d rounds", len(nodes), cfg.num_clients, rounds)
    # All nodes take part every round; the strategy's own wait for nodes has no deadline, so it gets the count we saw.
    strategy = FlowerFedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=len(nodes),
                            min_available_nodes=len(nodes))
    initial = ArrayRecord(model.state_dict())
    outcome = strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds, timeout=cfg.deadline_s,
                             train_config=ConfigRecord(settings_config(cfg, settings)), evaluate_fn=evaluate)
    accuracy = [float(outcome.evaluate_metrics_serverapp[t]["accuracy"]) for t in range(1, rounds + 1)]
    model.load_state_dict(outcome.arrays.to_torch_state_dict())
    result = {
        "accuracy": accuracy,
        "initial_accuracy": float(outcome.evaluate_metrics_serverapp[0]["accuracy"]),
        # A round in which no node answered has no training metrics.
        "train_loss": [float(outcome.train_metrics_clientapp[t]["train-loss"]) if t in outcome.train_metrics_clientapp
                       else None for t in range(1, rounds + 1)],
        "upload_bytes_per_round": int(initial.count_bytes()),
        "nodes": len(nodes),
        "wall_time_s": time.monotonic() - start,
    }
    if cfg.results_path:
        write_json_atomic(cfg.results_path, {**result, "config": cfg.to_mapping(), "settings": settings, "rounds": rounds})
    result["model"] = model
    return result
