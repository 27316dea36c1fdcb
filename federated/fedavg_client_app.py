"""The FedAvg baseline's ClientApp: one round of local SGD on this node's features, for Flower's own FedAvg.

A sibling of ``client_app``: Flower's built-in ``FedAvg`` strategy sends
every node the global model (ArrayRecord "arrays") and a ConfigRecord
"config" holding the run config, the local-training settings
(``federated.fedavg.SETTING_KEYS``) and the "server-round" the strategy
adds; the node replies with its updated model and "num-examples", by which
the strategy weights the average. The update is ``federated.fedavg``'s, with
the batch order fixed by (seed, round, partition), so this app and the
in-process ``FedAvg`` give the same model.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .fedavg import features, local_update, make_module, round_generator, split_config
from .task import Config, client_partition, load_arrays, make_feature_map

app = ClientApp()


@lru_cache(maxsize=128)
def node_features(cfg: Config, partition_id: int, num_partitions: int, data_path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A node's phi (n, p) float32 and labels (n,) int64, computed once per process: FedAvg asks for them every round.

    At most 128 partitions are kept (a 100-client run on one worker fits).
    """
    x, y, _, _ = client_partition(cfg, partition_id, num_partitions, data_path)
    return features(make_feature_map(cfg, x.shape[1]), x), torch.as_tensor(y, dtype=torch.int64)


@app.train()
def local_round(msg: Message, context: Context) -> Message:
    """Reply with this node's model after its local epochs ("arrays") and its sample count ("metrics")."""
    cfg, settings, server_round = split_config(dict(msg.content["config"]))
    node = context.node_config
    partition_id = int(node["partition-id"])
    data_path = str(node.get("data-path", cfg.data_path))
    phi, y = node_features(cfg, partition_id, int(node.get("num-partitions", cfg.num_clients)), data_path)
    model = make_module(phi.shape[1], load_arrays(cfg.dataset, data_path).n_classes, settings["hidden"], cfg.seed)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    state, loss = local_update(model, phi, y, settings, round_generator(cfg.seed, server_round, partition_id))
    metrics = MetricRecord({"num-examples": int(y.shape[0]), "train-loss": loss})
    return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), reply_to=msg)
