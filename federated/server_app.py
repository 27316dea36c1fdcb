"""The Flower ServerApp: one main loop that collects the uploads, validates them and fits the KRR head.

The loop waits for the nodes (up to the deadline), sends every node the run
config, keeps the replies that arrive before the deadline, validates each
upload (an invalid one is recorded with its reason and left out), proceeds
once ``min-clients`` uploads are valid, chooses lambda after the upload,
optionally refines the head, evaluates it on the server's test split and
writes the results JSON atomically.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy.linalg import cho_factor, cho_solve
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

import distillmem as dm

from .features import head_arrays, upload_spec
from .privacy import privacy_log_line, privacy_report
from .task import (
    REG_GRID,
    STATISTICS_MODES,
    Config,
    RidgePath,
    UploadError,
    accuracy,
    average_heads,
    make_feature_map,
    split_training,
    training_partitions,
    upload_head,
    upload_statistics,
    validate_upload,
    write_json_atomic,
)

logger = logging.getLogger("flwr")

#: Seconds between polls while the nodes register.
POLL_S = 0.5


def server_app(config: Config | None = None, sink: Callable[[dict[str, Any]], None] | None = None) -> ServerApp:
    """A ServerApp running ``run_server``: with ``config``, or from the run config (``flwr run``).

    ``sink`` receives the results dict (with the fitted head) in this process:
    ``run_simulation`` runs the ServerApp in a thread of the caller.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if config is None:
            cfg = Config.from_mapping(context.run_config)
            # One file per run, so a second `flwr run` never overwrites the first one's results.
            cfg = dataclasses.replace(cfg, results_path=cfg.results_path.replace("{run_id}", str(context.run_id)))
        else:
            cfg = config
        result = run_server(grid, cfg)
        if sink is not None:
            sink(result)

    return app


def run_server(grid: Grid, cfg: Config) -> dict[str, Any]:
    """The whole round: returns the results dict (``head`` is the fitted distillmem.KRR)."""
    start = time.monotonic()
    data = head_arrays(cfg, cfg.data_path)
    d, k = data.x_train.shape[1], data.n_classes
    fmap = make_feature_map(cfg, d)
    p = fmap.out_features(d)
    spec = upload_spec(cfg, fmap, cfg.data_path)
    pool, server_val = split_training(cfg, data.x_train.shape[0])
    # Every client builds the same partitions; building them here first turns a split that cannot be
    # made into one clear error before any node is asked.
    training_partitions(cfg, data)

    nodes = wait_for_nodes(grid, cfg.num_clients, cfg.deadline_s)
    logger.info("federated: %d of %d nodes connected, mode %s", len(nodes), cfg.num_clients, cfg.mode)
    config_record = ConfigRecord(cfg.to_mapping())
    asks = [Message(RecordDict({"config": config_record}), dst_node_id=n, message_type="train", group_id="upload") for n in nodes]
    replies = list(grid.send_and_receive(asks, timeout=cfg.deadline_s))

    accepted: list[int] = []
    rejected: dict[int, str] = {}
    upload_bytes: dict[int, int] = {}
    partitions: dict[int, int] = {}
    gram, cross, correction, heads, n_total = np.zeros((p, p)), np.zeros((p, k)), np.zeros((p, k)), [], 0
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error():
            rejected[node] = f"client error (code {reply.error.code}): {_last_line(reply.error.reason)}"
            continue
        try:
            arrays, n_local, partition_id, nbytes = _decode(reply, cfg, spec)
            upload_bytes[node] = nbytes
            partitions[node] = partition_id
            validate_upload(cfg, arrays, n_local, d, p, k)
            if cfg.mode in STATISTICS_MODES:
                g_i, r_i, c_i = upload_statistics(cfg, fmap, arrays, n_local, d, k)
                gram += g_i
                cross += r_i
                if c_i is not None:
                    correction += c_i
            else:
                heads.append(upload_head(cfg, fmap, arrays, k))
        except UploadError as err:
            rejected[node] = str(err)
            continue
        accepted.append(node)
        n_total += n_local
    answered = {r.metadata.src_node_id for r in replies}
    missing = [n for n in nodes if n not in answered]
    for node, reason in rejected.items():
        logger.warning("federated: rejected node %s: %s", node, reason)
    if missing:
        logger.warning("federated: no reply before the deadline from nodes %s", missing)
    if len(accepted) < cfg.min_clients:
        raise RuntimeError(
            f"quorum not met: {len(accepted)} valid uploads, min-clients={cfg.min_clients}; "
            f"rejected {rejected}, missing {missing}, not connected {cfg.num_clients - len(nodes)}"
        )

    path = RidgePath(gram, cross - correction) if cfg.mode in STATISTICS_MODES else None
    if path is None:
        # Each "ipc" upload reproduces its client's model at the clients' lambda.
        averaged = average_heads(heads)
        weights_of = lambda reg: averaged  # noqa: E731
    else:
        weights_of = path.weights
    reg, val_accuracy = _choose_reg(grid, cfg, accepted, weights_of, fmap, data, server_val)
    weights = weights_of(reg)
    # The centralized reference is the server reading all the data: timed apart from the run.
    central_start = time.monotonic()
    central = dm.KRR(fmap, reg=reg, n_classes=k).fit(data.x_train[pool].astype(np.float64), data.y_train[pool]) if cfg.centralized else None
    reference = None if central is None else central.weights_.numpy()
    central_s = time.monotonic() - central_start
    rounds = []
    if cfg.rounds > 1:
        score = lambda w: accuracy(fmap, w, data.x_test, data.y_test)  # noqa: E731
        refined, rounds = _refine(grid, cfg, accepted, gram, cross, reg, weights, reference, score)
        weights = weights if refined is None else refined

    head = dm.KRR.from_weights(fmap, torch.as_tensor(weights), reg, n_features_in=d, n_samples=n_total)
    result: dict[str, Any] = {
        "config": cfg.to_mapping(),
        "accuracy": head.score(data.x_test, data.y_test),
        "reg": reg,
        "val_accuracy": val_accuracy,
        "upload_bytes": [upload_bytes[n] for n in sorted(upload_bytes)],
        "upload_bytes_by_node": dict(sorted(upload_bytes.items())),
        "total_upload_bytes": int(sum(upload_bytes.values())),
        "clients": {
            "accepted": accepted,
            "rejected": rejected,
            "missing": missing,
            "not_connected": cfg.num_clients - len(nodes),
            "partitions": partitions,
        },
        "n_samples": n_total,
        "server_validation_samples": int(server_val.shape[0]),
        "refinement": rounds,
        "privacy": privacy_report(cfg),
    }
    if central is not None:
        result["centralized_accuracy"] = central.score(data.x_test, data.y_test)
        result["weight_error"] = _relative_error(weights, reference)
        result["centralized_time_s"] = central_s
    result["wall_time_s"] = time.monotonic() - start - central_s
    logger.info("federated: %s", privacy_log_line(result["privacy"]))
    logger.info(
        "federated: accuracy %.4f (reg %g), %d accepted, %d rejected, %d missing, %d bytes uploaded",
        result["accuracy"], reg, len(accepted), len(rejected), len(missing), result["total_upload_bytes"],
    )
    if cfg.results_path:
        write_json_atomic(cfg.results_path, result)
        logger.info("federated: results written to %s", cfg.results_path)
    result["head"] = head
    return result


def wait_for_nodes(grid: Grid, want: int, deadline_s: float) -> list[int]:
    """Node ids once ``want`` have registered, or those registered when the deadline passes."""
    end = time.monotonic() + deadline_s
    while len(nodes := sorted(grid.get_node_ids())) < want and time.monotonic() < end:
        time.sleep(POLL_S)
    return nodes[:want]


def _decode(reply: Message, cfg: Config, spec: str) -> tuple[dict[str, np.ndarray], int, int, int]:
    """(arrays, n-local, partition-id, bytes) of a reply, or UploadError for anything that does not parse."""
    try:
        record = reply.content["upload"]
        meta = reply.content["meta"]
        nbytes = int(record.count_bytes())
        arrays = {name: array.numpy() for name, array in record.items()}
        mode, fmap_spec = str(meta["mode"]), str(meta["feature-map"])
        n_local, partition_id = meta["n-local"], meta["partition-id"]
    except Exception as err:  # noqa: BLE001 - any failure to read the bytes is a reason to reject
        raise UploadError(f"the upload does not parse: {type(err).__name__}: {err}") from None
    if mode != cfg.mode:
        raise UploadError(f"mode {mode!r}, the run's is {cfg.mode!r}")
    if fmap_spec != spec:
        raise UploadError(f"feature map {fmap_spec} is not the server's {spec}")
    if isinstance(n_local, bool) or not isinstance(n_local, int) or n_local < 1:
        raise UploadError(f"n-local={n_local!r} is not an integer >= 1")
    return arrays, n_local, int(partition_id), nbytes


def _choose_reg(grid, cfg, nodes, weights_of, fmap, data, server_val) -> tuple[float, dict[str, float]]:
    """lambda: the configured one, the best on the server's validation split, or by the clients' pooled counts."""
    if cfg.reg != "auto":
        return float(cfg.reg), {}
    candidates = np.stack([weights_of(r) for r in REG_GRID])
    if cfg.reg_select == "server":
        x_val, y_val = data.x_train[server_val], data.y_train[server_val]
        scores = [accuracy(fmap, w, x_val, y_val) for w in candidates]
    else:
        content = RecordDict(
            {"config": ConfigRecord(cfg.to_mapping()), "candidates": ArrayRecord({"weights": Array(candidates.astype(np.float32))})}
        )
        asks = [Message(content, dst_node_id=n, message_type="evaluate", group_id="select-reg") for n in nodes]
        correct, held = np.zeros(len(REG_GRID), dtype=np.int64), 0
        for reply in grid.send_and_receive(asks, timeout=cfg.deadline_s):
            if reply.has_error():
                logger.warning("federated: node %s failed to score lambdas: %s", reply.metadata.src_node_id, _last_line(reply.error.reason))
                continue
            counts = np.asarray(reply.content["scores"]["correct"], dtype=np.int64)
            if counts.shape != correct.shape:
                logger.warning("federated: node %s sent %s scores, expected %d", reply.metadata.src_node_id, counts.shape, len(REG_GRID))
                continue
            correct += counts
            held += int(reply.content["scores"]["n-held"])
        if held == 0:
            raise RuntimeError("no client scored the candidate lambdas: no held-out samples came back")
        scores = list(correct / held)
    table = {str(r): float(s) for r, s in zip(REG_GRID, scores)}
    # The first maximum in ascending order, as KRR(reg="auto") does.
    return float(REG_GRID[int(np.argmax(scores))]), table


def _refine(grid, cfg, nodes, gram, cross, reg, start, reference, score) -> tuple[np.ndarray | None, list[dict[str, Any]]]:
    """Preconditioned conjugate directions on (G + reg I) W^T = R, one product with G per round (docs/math.md, section 11.7).

    M = ``gram`` + reg I (the uploaded Gram estimate) preconditions. Each
    round every node sends G_i D^T for the server's direction D (k, p): k
    rows of p. The first direction is the one-shot head ``start`` (k, p), each
    later one M^-1 of the residual; every direction is made (G + reg I)-
    conjugate to the earlier ones column by column, so the iterate X is the
    best combination of all of them in the (G + reg I)-norm, and the head
    reported after the round is X + M^-1 (R - (G + reg I) X): one more
    preconditioned step, the next round's direction. A round that not every
    node answers stops the refinement (a missing term would bias the step);
    the last complete head is kept. Returns (W or None when no round
    completed, history with each round's test accuracy by ``score(W)``);
    ``reference`` (k, p), when given, is the centralized head each round is
    compared with.
    """
    factor = cho_factor(gram + reg * np.eye(gram.shape[0]))
    solution, residual = np.zeros_like(cross), cross.copy()
    direction = start.T.copy()
    done: list[tuple[np.ndarray, np.ndarray]] = []  # (direction, (G + reg I) direction), conjugate column by column
    weights, history = None, []
    for t in range(1, cfg.rounds):
        content = RecordDict({"config": ConfigRecord(cfg.to_mapping()), "head": ArrayRecord({"weights": Array(direction.T.copy())})})
        asks = [Message(content, dst_node_id=n, message_type="train.refine", group_id=f"refine-{t}") for n in nodes]
        replies = [r for r in grid.send_and_receive(asks, timeout=cfg.deadline_s) if not r.has_error()]
        if len(replies) < len(nodes):
            logger.warning("federated: refinement round %d stopped: %d of %d nodes answered", t + 1, len(replies), len(nodes))
            history.append({"round": t + 1, "stopped": f"{len(replies)} of {len(nodes)} nodes answered"})
            break
        product = sum(r.content["product"]["gw"].numpy() for r in replies).T + reg * direction  # (G + reg I) D^T
        for old, old_product in done:
            coef = _ratio(np.sum(old * product, axis=0), np.sum(old * old_product, axis=0))
            direction, product = direction - coef * old, product - coef * old_product
        done.append((direction, product))
        step = _ratio(np.sum(direction * residual, axis=0), np.sum(direction * product, axis=0))
        solution += step * direction
        residual -= step * product
        direction = cho_solve(factor, residual)
        weights = (solution + direction).T.copy()
        entry = {
            "round": t + 1,
            "accuracy": score(weights),
            "residual_norm": float(np.linalg.norm(residual)),
            "upload_bytes": int(sum(r.content["product"].count_bytes() for r in replies)),
        }
        if reference is not None:
            entry["weight_error"] = _relative_error(weights, reference)
        history.append(entry)
    return weights, history


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den column by column, 0 where den is not positive (a direction with no curvature left)."""
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _relative_error(weights: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(weights - reference) / np.linalg.norm(reference))


def _last_line(text: str | None) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no reason given"


app = server_app()
