"""The federated app through the in-process Grid: configuration, partitions, every upload mode, lambda
selection, exactness against centralized KRR, and each bad upload and fault with real ClientApp code."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

import distillmem as dm
from federated import simulate
from federated.client_app import upload as real_upload
from federated.partitions import partition_indices
from federated.task import (
    REG_GRID,
    Config,
    RidgePath,
    client_partition,
    load_arrays,
    make_feature_map,
    make_upload,
    sketch_layout,
    split_training,
    upload_head,
    upload_statistics,
    validate_upload,
)
from distillmem.sketch import GramSketch

DIGITS = load_arrays("digits", "")


def _pool_labels(cfg: Config) -> tuple[int, ...]:
    pool, _ = split_training(cfg, DIGITS.x_train.shape[0])
    return tuple(DIGITS.y_train[pool].tolist())


def _krr_on_partitions(cfg: Config, partitions, reg: float) -> torch.Tensor:
    """Weights (k, p) of centralized KRR on the union of the given clients' data, in float64."""
    parts = [client_partition(cfg, i, cfg.num_clients, "") for i in partitions]
    x = np.concatenate([p[0] for p in parts]).astype(np.float64)
    y = np.concatenate([p[1] for p in parts])
    return dm.KRR(make_feature_map(cfg, x.shape[1]), reg=reg, n_classes=10).fit(x, y).weights_


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


# -- configuration -------------------------------------------------------------------------


def test_config_reads_kebab_case_and_names_bad_values():
    cfg = Config.from_mapping({"num-clients": 5, "mode": "sketch", "max-points": 7, "alpha": 1, "reg": "auto"})
    assert (cfg.num_clients, cfg.mode, cfg.max_points, cfg.alpha, cfg.reg) == (5, "sketch", 7, 1.0, "auto")
    assert Config.from_mapping(cfg.to_mapping()) == cfg
    with pytest.raises(ValueError, match="unknown configuration key 'num_client'"):
        Config.from_mapping({"num_client": 3})
    for bad, match in [
        ({"mode": "weights"}, "mode='weights'"),
        ({"num-clients": 1}, "num-clients=1"),
        ({"num-clients": 1001}, "num-clients=1001"),
        ({"reg": -1.0}, "reg=-1.0"),
        ({"reg": "best"}, "reg='best'"),
        ({"mode": "sketch"}, "max-points=0"),
        ({"mode": "ipc", "reg": "auto"}, "mode \"ipc\" fixes lambda"),
        ({"min-clients": 11}, "min-clients=11"),
        ({"dataset": "mnist"}, "data-path"),
        ({"alpha": 0.0}, "alpha=0.0"),
        ({"seed": -1}, "seed=-1"),
        ({"seed": 1.5}, "seed=1.5"),
        ({"centralized": "yes"}, "centralized='yes'"),
        ({"data-path": 3}, "data-path=3"),
        ({"partition": "shards"}, "partition='shards'"),
        ({"rounds": 3, "mode": "means"}, "rounds=3"),
    ]:
        with pytest.raises(ValueError, match=match):
            Config.from_mapping(bad)


def test_simulate_rejects_an_unknown_engine():
    with pytest.raises(ValueError, match="engine='dask'"):
        simulate(engine="dask")


# -- partitions ------------------------------------------------------------------------------


@pytest.mark.parametrize("partition", ["iid", "dirichlet", "pathological"])
def test_partitions_cover_the_training_split_exactly_and_are_seeded(partition):
    labels = _pool_labels(Config())
    parts = partition_indices(labels, 11, partition, 0.3, 2, 0)
    joined = np.concatenate(parts)
    assert joined.shape[0] == len(labels) and np.array_equal(np.sort(joined), np.arange(len(labels)))
    partition_indices.cache_clear()
    again = partition_indices(labels, 11, partition, 0.3, 2, 0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition_indices(labels, 11, partition, 0.3, 2, 1)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))
    classes = [np.unique(np.asarray(labels)[p]).size for p in parts]
    if partition == "iid":
        assert min(classes) == 10  # shuffled first: not contiguous label blocks
    if partition == "pathological":
        assert max(classes) == 2


def test_partitions_scale_to_many_clients_and_refuse_impossible_ones():
    labels = _pool_labels(Config())
    parts = partition_indices(labels, 1000, "iid", 0.5, 2, 0)
    assert len(parts) == 1000 and min(p.size for p in parts) >= 1
    with pytest.raises(ValueError, match="num-clients >= the 10 classes"):
        partition_indices(labels, 4, "pathological", 0.5, 2, 0)
    with pytest.raises(ValueError, match="exceeds"):
        partition_indices(labels[:10], 11, "iid", 0.5, 2, 0)
    with pytest.raises(ValueError, match="cannot split 1437 samples over 1000 clients"):
        simulate(num_clients=1000, partition="dirichlet", alpha=0.1, mode="means", engine="inprocess")


def test_server_validation_split_is_carved_before_partitioning():
    cfg = Config(reg="auto", num_clients=3)
    pool, val = split_training(cfg, DIGITS.x_train.shape[0])
    assert val.size == int(0.1 * DIGITS.x_train.shape[0]) and np.intersect1d(pool, val).size == 0
    seen = np.concatenate([pool[partition_indices(_pool_labels(cfg), 3, "dirichlet", 0.5, 2, 0)[i]] for i in range(3)])
    assert np.array_equal(np.sort(seen), pool)


# -- exactness and modes -----------------------------------------------------------------------


@pytest.mark.parametrize("partition", ["dirichlet", "pathological"])
@pytest.mark.parametrize("mode", ["moments", "stats"])
def test_exact_modes_equal_centralized_krr_for_every_lambda(partition, mode):
    cfg = Config(num_clients=10, partition=partition, alpha=0.1, mode=mode)
    fmap = make_feature_map(cfg, DIGITS.x_train.shape[1])
    gram, cross = 0.0, 0.0
    for i in range(cfg.num_clients):
        x, y, _, _ = client_partition(cfg, i, cfg.num_clients, "")
        arrays = make_upload(cfg, fmap, x, y, 10, i)
        g, r, _ = upload_statistics(cfg, fmap, arrays, x.shape[0], x.shape[1], 10)
        gram, cross = gram + g, cross + r
    path = RidgePath(gram, cross)
    x_all = DIGITS.x_train.astype(np.float64)
    for reg in (1e-3, 1.0, 100.0):
        central = dm.KRR(fmap, reg=reg).fit(x_all, DIGITS.y_train).weights_
        assert _rel(torch.as_tensor(path.weights(reg)), central) < 1e-6


def test_moments_simulation_matches_centralized_on_a_non_iid_partition():
    result = simulate(num_clients=6, partition="dirichlet", alpha=0.1, mode="moments", reg=1.0, engine="inprocess")
    assert result["weight_error"] < 1e-6
    assert abs(result["accuracy"] - result["centralized_accuracy"]) <= 0.0005
    assert result["n_samples"] == DIGITS.x_train.shape[0]
    assert len(result["clients"]["accepted"]) == 6 and not result["clients"]["rejected"] and not result["clients"]["missing"]
    head = result["head"]
    assert isinstance(head, dm.KRR) and head.weights_.shape == (10, 64)
    assert head.score(DIGITS.x_test, DIGITS.y_test) == result["accuracy"]


@pytest.mark.parametrize(
    "mode, options, floor",
    [
        ("moments", {"max_points": 8}, 0.8),
        ("sketch", {"max_points": 8}, 0.8),
        ("real", {"max_points": 30}, 0.8),
        ("means", {}, 0.8),
        ("ipc", {"ipc": 2}, 0.8),
    ],
)
def test_compressed_modes_report_what_they_serialise(mode, options, floor):
    result = simulate(num_clients=4, mode=mode, engine="inprocess", **options)
    cfg = Config(num_clients=4, mode=mode, **options)
    fmap = make_feature_map(cfg, 64)
    expected = []
    for i in range(4):
        x, y, _, _ = client_partition(cfg, i, 4, "")
        arrays = make_upload(cfg, fmap, x, y, 10, i)
        rows = {"moments": "features", "sketch": "sketch", "real": "x"}.get(mode)
        if rows is not None:
            assert 1 <= arrays[rows].shape[0] <= options["max_points"]
        expected.append(ArrayRecord({n: Array(a) for n, a in arrays.items()}).count_bytes())
    partitions = result["clients"]["partitions"]
    by_node = result["upload_bytes_by_node"]
    assert sorted(expected) == sorted(result["upload_bytes"])
    assert all(by_node[node] == expected[i] for node, i in partitions.items())
    assert result["wall_time_s"] > 0 and result["centralized_time_s"] > 0
    assert result["total_upload_bytes"] == sum(expected)
    assert result["accuracy"] >= floor
    assert result["weight_error"] > 1e-6  # compressed: not the exact head


def test_ipc_server_averages_each_class_row_of_the_local_heads_by_class_count():
    cfg = Config(num_clients=3, mode="ipc", ipc=2, partition="dirichlet", alpha=0.3)
    result = simulate(num_clients=3, mode="ipc", ipc=2, alpha=0.3, engine="inprocess")
    fmap = make_feature_map(cfg, 64)
    rows, totals = 0, 0
    for i in range(3):
        x, y, _, _ = client_partition(cfg, i, 3, "")
        counts = torch.bincount(torch.as_tensor(y), minlength=10).to(torch.float64)
        rows = rows + counts[:, None] * dm.KRR(fmap, reg=1.0, n_classes=10).fit(x.astype(np.float64), y).weights_
        totals = totals + counts
    assert _rel(result["head"].weights_, rows / totals[:, None]) < 1e-6


def test_ipc_client_holding_a_single_class_uploads_its_local_head():
    # Under strong label skew a client may hold one class only; its upload must still reproduce its local KRR head.
    cfg = Config(num_clients=3, mode="ipc", ipc=2)
    x, y, _, _ = client_partition(cfg, 0, 3, "")
    one = y == y[0]
    x, y = x[one], y[one]
    fmap = make_feature_map(cfg, 64)
    arrays = make_upload(cfg, fmap, x, y, 10, 0)
    assert arrays["targets"].shape == (2, 10) and np.all(arrays["targets"][:, np.arange(10) != y[0]] == 0)
    head, counts = upload_head(cfg, fmap, arrays, 10)
    expected = dm.KRR(fmap, reg=1.0, n_classes=10).fit(x.astype(np.float64), y).weights_.numpy()
    assert _rel(torch.as_tensor(head), torch.as_tensor(expected)) < 1e-6
    assert counts[y[0]] == one.sum() and counts.sum() == one.sum()


def test_sketch_with_full_rank_is_exact_and_beats_moments_at_equal_rows():
    exact = simulate(num_clients=3, mode="sketch", max_points=64, engine="inprocess")
    assert exact["weight_error"] < 1e-6
    small = simulate(num_clients=3, mode="sketch", max_points=8, engine="inprocess")
    rows = simulate(num_clients=3, mode="moments", max_points=8, engine="inprocess")
    assert small["accuracy"] >= small["centralized_accuracy"] - 0.05
    assert small["accuracy"] > rows["accuracy"]
    assert small["total_upload_bytes"] < exact["total_upload_bytes"] / 2


@pytest.mark.parametrize(
    "options, layout, block",
    [({"max_points": 30}, (20, True), "target"), ({"max_points": 30, "rounds": 2}, (20, True), "correction"),
     ({"max_points": 8}, (8, False), None), ({"max_points": 64}, (64, False), None),
     ({"max_points": 30, "reg": "auto"}, (30, False), None)],
)
def test_sketch_rows_and_correction_rows_together_fit_max_points(options, layout, block):
    """One-shot corrected uploads send R - C as one float32 block; refinement needs R and C apart."""
    cfg = Config(num_clients=4, mode="sketch", **options)
    assert sketch_layout(cfg, 64, 10) == layout
    x, y, _, _ = client_partition(cfg, 0, 4, "")
    fmap = make_feature_map(cfg, 64)
    arrays = make_upload(cfg, fmap, x, y, 10, 0)
    rank, corrected = layout
    assert arrays["sketch"].shape == (rank, 64) and arrays["sketch"].dtype == np.float32
    expected = {"sketch", "shrinkage", "diagonal"} | ({"target"} if block == "target" else {"cross"} | ({"correction"} if corrected else set()))
    assert set(arrays) == expected
    if block is not None:
        assert arrays[block].shape == (10, 64) and arrays[block].dtype == (np.float32 if block == "target" else np.float64)
        assert arrays["sketch"].shape[0] + arrays[block].shape[0] <= options["max_points"]
    if block == "target":
        sk = GramSketch(fmap, 10, rank=rank, reg=1.0).update(x.astype(np.float64), y)
        torch.testing.assert_close(torch.as_tensor(arrays["target"].T, dtype=torch.float64), sk.cross_ - sk.correction_,
                                   rtol=1e-6, atol=1e-6 * float(sk.cross_.abs().max()))


def test_one_shot_target_block_gives_the_statistics_of_separate_cross_moments_and_correction():
    """Folding C into R on the client changes what the server adds up by float32 rounding only, and saves k rows."""
    one_shot = Config(num_clients=4, mode="sketch", max_points=30)
    apart = Config(num_clients=4, mode="sketch", max_points=30, rounds=2)
    x, y, _, _ = client_partition(one_shot, 1, 4, "")
    fmap = make_feature_map(one_shot, 64)
    stats = {}
    for name, cfg in (("one_shot", one_shot), ("apart", apart)):
        arrays = make_upload(cfg, fmap, x, y, 10, 1)
        validate_upload(cfg, arrays, x.shape[0], 64, 64, 10)
        gram, cross, correction = upload_statistics(cfg, fmap, arrays, x.shape[0], 64, 10)
        stats[name] = (gram, cross if correction is None else cross - correction, sum(a.nbytes for a in arrays.values()))
    np.testing.assert_allclose(stats["one_shot"][0], stats["apart"][0], rtol=1e-12)
    np.testing.assert_allclose(stats["one_shot"][1], stats["apart"][1], rtol=1e-6, atol=1e-6 * np.abs(stats["apart"][1]).max())
    assert stats["apart"][2] - stats["one_shot"][2] == 10 * 64 * (8 + 8 - 4)  # R and C in float64 -> R - C in float32


def test_corrected_sketch_head_uses_the_sum_of_the_clients_corrections():
    cfg = Config(num_clients=4, mode="sketch", max_points=30, partition="dirichlet", alpha=0.3)
    result = simulate(num_clients=4, mode="sketch", max_points=30, alpha=0.3, engine="inprocess")
    fmap = make_feature_map(cfg, 64)
    gram, cross, correction = 0, 0, 0
    for i in range(4):
        x, y, _, _ = client_partition(cfg, i, 4, "")
        sk = GramSketch(fmap, 10, rank=20, reg=1.0).update(x.astype(np.float64), y)
        gram, cross, correction = gram + sk.gram(), cross + sk.cross_, correction + sk.correction_
    eye = torch.eye(64, dtype=torch.float64)
    expected = torch.linalg.solve(gram + eye, cross - correction).T
    plain = torch.linalg.solve(gram + eye, cross).T
    exact = _krr_on_partitions(cfg, range(4), 1.0)
    # The clients send their rows in float32: the heads agree to that precision.
    assert _rel(result["head"].weights_, expected) < 1e-4
    assert result["weight_error"] < 0.85 * _rel(plain, exact)


# -- lambda after the upload ------------------------------------------------------------------------


def test_lambda_on_the_server_validation_split_is_krr_auto_on_it():
    result = simulate(num_clients=4, mode="moments", reg="auto", engine="inprocess")
    cfg = Config(num_clients=4, reg="auto")
    pool, val = split_training(cfg, DIGITS.x_train.shape[0])
    fmap = make_feature_map(cfg, 64)
    x = DIGITS.x_train.astype(np.float64)
    reference = dm.KRR(fmap, reg="auto", reg_grid=REG_GRID).fit(x[pool], DIGITS.y_train[pool], eval_set=(x[val], DIGITS.y_train[val]))
    assert result["reg"] == reference.reg_
    assert result["server_validation_samples"] == val.size and result["n_samples"] == pool.size
    assert result["weight_error"] < 1e-6


def test_lambda_by_a_federated_evaluation_round_uses_the_pooled_counts():
    result = simulate(num_clients=4, mode="moments", reg="auto", reg_select="federated", engine="inprocess")
    cfg = Config(num_clients=4, reg="auto", reg_select="federated")
    parts = [client_partition(cfg, i, 4, "") for i in range(4)]
    x_fit = np.concatenate([p[0] for p in parts]).astype(np.float64)
    y_fit = np.concatenate([p[1] for p in parts])
    x_held = np.concatenate([p[2] for p in parts]).astype(np.float64)
    y_held = np.concatenate([p[3] for p in parts])
    assert result["server_validation_samples"] == 0 and result["n_samples"] == x_fit.shape[0]
    assert x_held.shape[0] > 0 and x_fit.shape[0] + x_held.shape[0] == DIGITS.x_train.shape[0]
    fmap = make_feature_map(cfg, 64)
    reference = dm.KRR(fmap, reg="auto", reg_grid=REG_GRID).fit(x_fit, y_fit, eval_set=(x_held, y_held))
    assert result["reg"] == reference.reg_


# -- refinement ---------------------------------------------------------------------------------------


def test_refinement_rounds_upload_k_rows_and_reduce_the_weight_error():
    one_shot = simulate(num_clients=5, mode="sketch", max_points=6, engine="inprocess", centralized=True)
    refined = simulate(num_clients=5, mode="sketch", max_points=6, rounds=6, engine="inprocess")
    history = refined["refinement"]
    assert [h["round"] for h in history] == [2, 3, 4, 5, 6]
    errors = [one_shot["weight_error"]] + [h["weight_error"] for h in history]
    assert all(b < a for a, b in zip(errors, errors[1:]))
    assert history[-1]["accuracy"] == refined["accuracy"]
    # k rows of p float64 per client and round, plus the array headers.
    assert all(5 * 10 * 64 * 8 <= h["upload_bytes"] < 5 * (10 * 64 * 8 + 256) for h in history)


def test_refinement_stops_at_a_round_not_every_node_answers_and_keeps_the_last_head():
    from federated.client_app import refine as real_refine

    app = ClientApp()
    app.train()(real_upload)

    @app.train("refine")
    def refine(msg: Message, context) -> Message:
        if int(context.node_config["partition-id"]) == 1:
            raise RuntimeError("gone")
        return real_refine(msg, context)

    options = dict(num_clients=3, mode="sketch", max_points=6, engine="inprocess")
    stopped = simulate(rounds=4, client_app=app, **options)
    assert stopped["refinement"] == [{"round": 2, "stopped": "2 of 3 nodes answered"}]
    # The same one-shot head, up to the order in which the replies were summed.
    assert _rel(stopped["head"].weights_, simulate(**options)["head"].weights_) < 1e-10


# -- bad uploads and faults ------------------------------------------------------------------------------


def _reply_with(reply: Message, msg: Message, arrays=None, meta=None, record=None) -> Message:
    """The reply rebuilt with some arrays or metadata replaced."""
    base = {n: a.numpy() for n, a in reply.content["upload"].items()}
    base.update(arrays or {})
    fields = dict(reply.content["meta"])
    fields.update(meta or {})
    upload = record if record is not None else ArrayRecord({n: Array(a) for n, a in base.items()})
    return Message(RecordDict({"upload": upload, "meta": ConfigRecord(fields)}), reply_to=msg)


def _tampering_app(tampers) -> ClientApp:
    """The real ClientApp, except that partition i's reply goes through tampers[i](reply, msg)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context) -> Message:
        tamper = tampers.get(int(context.node_config["partition-id"]))
        reply = real_upload(msg, context)
        return reply if tamper is None else tamper(reply, msg)

    return app


def _first(reply: Message, name: str) -> np.ndarray:
    return reply.content["upload"][name].numpy()


def _crash(reply, msg):
    raise RuntimeError("disk on fire")


def _hang(reply, msg):
    time.sleep(4.0)
    return reply


def _nan(reply, msg):
    f = _first(reply, "features").copy()
    f[0, 0] = np.nan
    return _reply_with(reply, msg, {"features": f})


MOMENTS_TAMPERS = {
    1: (_crash, "client error (code 2): RuntimeError: disk on fire"),
    2: (_nan, "features contains NaN or Inf"),
    3: (lambda r, m: _reply_with(r, m, {"features": np.vstack([_first(r, "features")] * 2)}), "more than the cap of 64"),
    4: (lambda r, m: _reply_with(r, m, {"features": _first(r, "features").astype(np.float32)}), "dtype float32"),
    5: (lambda r, m: _reply_with(r, m, {"features": _first(r, "features")[:, :10]}), "shape"),
    6: (lambda r, m: _reply_with(r, m, {"targets": 50.0 * _first(r, "targets")}), "energy"),
    7: (lambda r, m: _reply_with(r, m, meta={"feature-map": '{"name": "identity", "params": {}, "seed": null}'}), "feature map"),
    8: (
        lambda r, m: _reply_with(
            r, m, record=ArrayRecord({"features": Array(dtype="float64", shape=(3, 64), stype="numpy.ndarray", data=b"junk"),
                                      "targets": Array(np.zeros((3, 10)))})
        ),
        "does not parse",
    ),
    9: (lambda r, m: _reply_with(r, m, {"extra": np.zeros(3)}), "do not match mode"),
    10: (lambda r, m: _reply_with(r, m, meta={"mode": "stats"}), "mode 'stats'"),
    11: (lambda r, m: _reply_with(r, m, {"features": np.full((2, 64), np.inf), "targets": np.zeros((2, 10))}), "NaN or Inf"),
}
HONEST = [0, 12, 13]


def test_bad_uploads_and_faults_leave_the_honest_head_unchanged(tmp_path):
    tampers = {i: t for i, (t, _) in MOMENTS_TAMPERS.items()}
    tampers[14] = _hang
    out = tmp_path / "results.json"
    result = simulate(
        num_clients=15, partition="iid", mode="moments", engine="inprocess", client_app=_tampering_app(tampers),
        deadline_s=2.5, min_clients=3, results_path=str(out),
    )
    partitions = {int(node): i for node, i in result["clients"]["partitions"].items()}
    # The in-process grid gives partition i to node i + 1; errors carry no partition id.
    node_of = {i: i + 1 for i in range(15)}
    assert sorted(result["clients"]["accepted"]) == [node_of[i] for i in HONEST]
    rejected = {int(n): reason for n, reason in result["clients"]["rejected"].items()}
    assert set(rejected) == {node_of[i] for i in MOMENTS_TAMPERS}
    for i, (_, reason) in MOMENTS_TAMPERS.items():
        assert reason in rejected[node_of[i]], (i, rejected[node_of[i]])
    assert result["clients"]["missing"] == [node_of[14]]
    assert all(partitions[node_of[i]] == i for i in HONEST)
    honest = _krr_on_partitions(Config(num_clients=15, partition="iid"), HONEST, 1.0)
    assert _rel(result["head"].weights_, honest) < 1e-6
    saved = json.loads(out.read_text())
    assert saved["accuracy"] == result["accuracy"] and "head" not in saved
    assert saved["clients"]["missing"] == [node_of[14]]
    assert not list(tmp_path.glob(".results.json.*"))  # no temporary file left behind


def test_labels_out_of_range_and_too_many_points_are_rejected_in_real_mode():
    def labels(r, m):
        y = _first(r, "labels").copy()
        y[0] = 10
        return _reply_with(r, m, {"labels": y})

    def too_many(r, m):
        return _reply_with(r, m, {"x": np.vstack([_first(r, "x")] * 2), "labels": np.tile(_first(r, "labels"), 2)})

    result = simulate(
        num_clients=4, partition="iid", mode="real", max_points=20, engine="inprocess",
        client_app=_tampering_app({1: labels, 2: too_many}), min_clients=2,
    )
    rejected = {int(n): reason for n, reason in result["clients"]["rejected"].items()}
    assert "labels outside [0, 10)" in rejected[2] and "more than the cap of 20" in rejected[3]
    assert sorted(result["clients"]["accepted"]) == [1, 4]


def test_a_sketch_whose_diagonal_contradicts_its_rows_is_rejected():
    def shrink_diagonal(r, m):
        return _reply_with(r, m, {"diagonal": 0.5 * _first(r, "diagonal")})

    result = simulate(
        num_clients=3, mode="sketch", max_points=8, engine="inprocess", client_app=_tampering_app({0: shrink_diagonal}),
    )
    rejected = {int(n): reason for n, reason in result["clients"]["rejected"].items()}
    assert list(rejected) == [1] and "not a sketch of one Gram" in rejected[1]
    assert sorted(result["clients"]["accepted"]) == [2, 3]


@pytest.mark.parametrize("block, rounds", [("target", 1), ("correction", 2)])
def test_a_sketch_correction_that_is_missing_misshapen_or_not_finite_is_rejected(block, rounds):
    def drop(r, m):
        upload = {n: a.numpy() for n, a in r.content["upload"].items() if n != block}
        return _reply_with(r, m, record=ArrayRecord({n: Array(a) for n, a in upload.items()}))

    def misshapen(r, m):
        return _reply_with(r, m, {block: _first(r, block)[:5]})

    def nan(r, m):
        corr = _first(r, block).copy()
        corr[2, 3] = np.nan
        return _reply_with(r, m, {block: corr})

    result = simulate(
        num_clients=4, mode="sketch", max_points=30, rounds=rounds, engine="inprocess", min_clients=1,
        client_app=_tampering_app({0: drop, 1: misshapen, 2: nan}),
    )
    rejected = {int(n): reason for n, reason in result["clients"]["rejected"].items()}
    assert "do not match mode 'sketch'" in rejected[1]
    assert f"{block} has shape (5, 64), expected (10, 64)" in rejected[2]
    assert f"{block} contains NaN or Inf" in rejected[3]
    assert result["clients"]["accepted"] == [4]


def test_quorum_not_met_stops_the_run_with_who_failed():
    with pytest.raises(RuntimeError, match=r"quorum not met: 1 valid uploads, min-clients=2.*disk on fire"):
        simulate(num_clients=2, mode="means", engine="inprocess", client_app=_tampering_app({1: _crash}), min_clients=2)


def test_readme_federated_example_prints_what_the_readme_shows(capsys):
    from pathlib import Path
    import re

    section = (Path(__file__).resolve().parents[1] / "README.md").read_text().split("## Quickstart: federated learning")[1]
    code, shown = re.findall(r"```(?:python)?\n(.*?)```", section, re.S)[:2]
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()
    # Accuracies and bytes are deterministic; the weight errors of the exact modes are rounding.
    strip = lambda line: line.split(", weight error")[0]  # noqa: E731
    assert [strip(line) for line in printed] == [strip(line) for line in shown.strip().splitlines()]
