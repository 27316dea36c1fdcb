"""The Flower ClientApp: each node distils its own partition and sends the upload of the run's mode.

The run's configuration comes with every instruction (a ConfigRecord named
"config"), so the server is its single source; a node's ``node_config``
gives its ``partition-id`` and ``num-partitions`` and, in a deployment, its own
``data-path``.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .features import upload_spec
from .privacy import node_count
from .task import Config, client_partition, load_arrays, make_feature_map, make_upload, refine_upload, score_candidates

app = ClientApp()


def _setup(msg: Message, context: Context):
    """The run config, this node's partition id, k, data (fit and held-out) and the feature map."""
    cfg = Config.from_mapping(dict(msg.content["config"]))
    node = context.node_config
    partition_id = int(node["partition-id"])
    num_partitions = int(node.get("num-partitions", cfg.num_clients))
    data_path = str(node.get("data-path", cfg.data_path))
    x, y, x_held, y_held = client_partition(cfg, partition_id, num_partitions, data_path)
    k = load_arrays(cfg.dataset, data_path).n_classes
    return cfg, partition_id, k, (x, y, x_held, y_held), make_feature_map(cfg, x.shape[1])


@app.train()
def upload(msg: Message, context: Context) -> Message:
    """Reply with the upload ("upload" arrays) and its metadata ("meta")."""
    cfg, partition_id, k, (x, y, _, _), fmap = _setup(msg, context)
    arrays = make_upload(cfg, fmap, x, y, k, partition_id)
    meta = ConfigRecord(
        {
            "mode": cfg.mode,
            "feature-map": upload_spec(cfg, fmap, str(context.node_config.get("data-path", cfg.data_path))),
            "n-local": node_count(arrays, int(x.shape[0])),  # the noisy count under dp-epsilon
            "partition-id": partition_id,
        }
    )
    body = RecordDict({"upload": ArrayRecord({name: Array(a) for name, a in arrays.items()}), "meta": meta})
    return Message(body, reply_to=msg)


@app.train("refine")
def refine(msg: Message, context: Context) -> Message:
    """Reply with G_i W^T as (k, p) for the server's current head W (k, p)."""
    _, _, _, (x, _, _, _), fmap = _setup(msg, context)
    weights = msg.content["head"]["weights"].numpy()
    return Message(RecordDict({"product": ArrayRecord({"gw": Array(refine_upload(fmap, x, weights))})}), reply_to=msg)


@app.evaluate()
def score(msg: Message, context: Context) -> Message:
    """Reply with the correct counts of every candidate head on this node's held-out split."""
    _, _, _, (_, _, x_held, y_held), fmap = _setup(msg, context)
    weights = msg.content["candidates"]["weights"].numpy().astype(np.float64)
    correct = score_candidates(fmap, x_held, y_held, weights) if x_held.shape[0] else np.zeros(weights.shape[0], np.int64)
    body = RecordDict({"scores": MetricRecord({"correct": [int(c) for c in correct], "n-held": int(x_held.shape[0])})})
    return Message(body, reply_to=msg)
