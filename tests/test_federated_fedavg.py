"""FedAvg of a linear head / MLP on frozen features (federated.fedavg): weighting, learning, determinism, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from distillmem.features import Identity, RandomFCNN
from federated.fedavg import FedAvg
from federated.task import Config, client_partition, load_arrays

DIGITS = load_arrays("digits", "")


def _clients(num: int = 3, partition: str = "dirichlet", alpha: float = 0.5):
    cfg = Config(num_clients=num, partition=partition, alpha=alpha, seed=0)
    return [client_partition(cfg, i, num, "")[:2] for i in range(num)]


@pytest.mark.parametrize("loss", ["cross_entropy", "squared"])
def test_one_round_of_one_full_batch_step_is_gradient_descent_on_the_pooled_data(loss):
    """With one local step per client, averaging by n_i gives exactly a full-batch step on the union.

    Unequal client sizes make an unweighted average differ, so this pins the weighting.
    """
    clients = _clients(3)
    sizes = [y.shape[0] for _, y in clients]
    assert len(set(sizes)) == 3
    model = FedAvg(Identity(), rounds=1, lr=0.05, batch_size=max(sizes), loss=loss, seed=3).fit(clients, n_classes=10)

    x = torch.as_tensor(np.concatenate([c[0] for c in clients]))
    y = torch.as_tensor(np.concatenate([c[1] for c in clients]))
    torch.manual_seed(3)
    reference = nn.Linear(x.shape[1], 10)
    scores = reference(x)
    if loss == "cross_entropy":
        objective = nn.functional.cross_entropy(scores, y)
    else:
        objective = 0.5 * (scores - nn.functional.one_hot(y, 10).float()).square().sum(1).mean()
    objective.backward()
    with torch.no_grad():
        expected = {name: p - 0.05 * p.grad for name, p in reference.named_parameters()}
    got = model.parameters_()
    assert set(got) == {"weight", "bias"}
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value.numpy(), atol=2e-6, rtol=1e-5)


def test_learns_a_linear_head_on_non_iid_clients_and_records_every_round():
    clients = _clients(5, alpha=0.3)
    model = FedAvg(RandomFCNN(64, seed=0), rounds=15, lr=0.1, batch_size=32, seed=0)
    model.fit(clients, n_classes=10, eval_set=(DIGITS.x_test, DIGITS.y_test))
    curve = [h["accuracy"] for h in model.history_]
    assert [h["round"] for h in model.history_] == list(range(1, 16))
    assert curve[-1] > 0.85 and curve[-1] > curve[0]
    assert model.history_[-1]["train_loss"] < model.history_[0]["train_loss"]
    params = model.parameters_()
    assert params["weight"].shape == (10, 64) and params["bias"].shape == (10,)
    assert all(a.dtype == np.float32 for a in params.values())


def test_the_same_seed_gives_the_same_run_and_another_seed_another():
    clients = _clients(3)
    runs = [FedAvg(Identity(), rounds=2, seed=s).fit(clients, n_classes=10).parameters_()["weight"] for s in (1, 1, 2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_mlp_has_a_hidden_layer_and_learns():
    clients = _clients(3, partition="iid")
    model = FedAvg(Identity(), rounds=5, hidden=32, lr=0.05, seed=0).fit(clients, n_classes=10, eval_set=(DIGITS.x_test, DIGITS.y_test))
    shapes = {name: a.shape for name, a in model.parameters_().items()}
    assert shapes == {"0.weight": (32, 64), "0.bias": (32,), "2.weight": (10, 32), "2.bias": (10,)}
    assert model.history_[-1]["accuracy"] > 0.8


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rounds": 0}, "rounds=0"),
        ({"local_epochs": 1.5}, "local_epochs=1.5"),
        ({"batch_size": True}, "batch_size=True"),
        ({"hidden": -1}, "hidden=-1"),
        ({"lr": 0.0}, "lr=0.0"),
        ({"lr": float("nan")}, "lr=nan"),
        ({"momentum": 1.0}, "momentum=1.0"),
        ({"loss": "hinge"}, "loss='hinge'"),
    ],
)
def test_bad_hyperparameters_are_named_at_fit(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FedAvg(Identity(), **kwargs).fit(_clients(2), n_classes=10)


def test_bad_clients_are_named():
    (x, y), other = _clients(2)
    with pytest.raises(ValueError, match=r"clients\[1\]: labels must lie in \[0, 10\)"):
        FedAvg(Identity(), rounds=1).fit([(x, y), (other[0], other[1] + 10)], n_classes=10)
    with pytest.raises(ValueError, match=r"clients\[0\]: x has .* rows and y"):
        FedAvg(Identity(), rounds=1).fit([(x, y[:-1])], n_classes=10)
    with pytest.raises(ValueError, match="at least one client"):
        FedAvg(Identity(), rounds=1).fit([], n_classes=10)
    with pytest.raises(ValueError, match="n_classes=1"):
        FedAvg(Identity(), rounds=1).fit([(x, y)], n_classes=1)


# -- the same FedAvg through Flower's own strategy (federated.fedavg_client_app / fedavg_server_app) -----------------


@pytest.mark.parametrize("hidden", [0, 16])
def test_flower_strategy_fedavg_equals_the_in_process_loop(hidden, tmp_path):
    """Flower's FedAvg strategy with our ClientApp gives the in-process model: same init, batches and weighting."""
    from federated import simulate_fedavg
    from distillmem.features import RandomFCNN

    settings = dict(rounds=3, lr=0.1, batch_size=16, hidden=hidden, seed=2)
    results = tmp_path / "fedavg.json"
    flower = simulate_fedavg(num_clients=3, engine="inprocess", results_path=str(results), **settings)
    cfg = Config(num_clients=3, seed=2)
    clients = [client_partition(cfg, i, 3, "")[:2] for i in range(3)]
    fmap = RandomFCNN(DIGITS.x_train.shape[1], seed=0)
    local = FedAvg(fmap, **settings).fit(clients, n_classes=10, eval_set=(DIGITS.x_test, DIGITS.y_test))
    for name, value in local.model_.state_dict().items():
        torch.testing.assert_close(flower["model"].state_dict()[name], value, rtol=1e-4, atol=1e-5)
    assert flower["accuracy"] == pytest.approx([h["accuracy"] for h in local.history_], abs=2 / DIGITS.y_test.shape[0])
    assert flower["train_loss"] == pytest.approx([h["train_loss"] for h in local.history_], rel=1e-4)
    assert flower["accuracy"][-1] > flower["initial_accuracy"] + 0.3  # it learned
    parameters = sum(t.numel() for t in local.model_.state_dict().values())
    assert flower["nodes"] == 3 and flower["upload_bytes_per_round"] >= 4 * parameters  # float32, plus headers
    assert json.loads(results.read_text())["accuracy"] == flower["accuracy"]


def test_flower_strategy_fedavg_refuses_bad_settings_by_name():
    from federated import simulate_fedavg

    with pytest.raises(ValueError, match="lr="):
        simulate_fedavg(num_clients=3, engine="inprocess", lr=0.0)
    with pytest.raises(ValueError, match="rounds="):
        simulate_fedavg(num_clients=3, engine="inprocess", rounds=0)
    with pytest.raises(ValueError, match="loss="):
        simulate_fedavg(num_clients=3, engine="inprocess", loss="hinge")


def test_a_node_computes_its_features_once_per_process():
    """Every FedAvg round asks the node for its features: the second round reads the first one's."""
    from federated.fedavg_client_app import node_features

    node_features.cache_clear()
    cfg = Config(num_clients=3, seed=4)
    phi, y = node_features(cfg, 1, 3, "")
    again, y_again = node_features(cfg, 1, 3, "")
    assert again is phi and y_again is y
    x, labels, _, _ = client_partition(cfg, 1, 3, "")
    fresh = RandomFCNN(x.shape[1], seed=0)(torch.as_tensor(x, dtype=torch.float32))
    torch.testing.assert_close(phi, fresh.to(torch.float32))
    assert torch.equal(y, torch.as_tensor(labels, dtype=torch.int64))
    other, _ = node_features(cfg, 2, 3, "")
    assert other.shape[0] != phi.shape[0] or not torch.equal(other, phi)
    assert node_features.cache_info().hits == 1
