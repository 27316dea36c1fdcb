"""FedAvg of a linear head (or a one-hidden-layer MLP) on frozen features: the local update and an in-process loop.

The baseline the one-shot uploads are measured against: every round each
client starts from the global model, runs ``local_epochs`` of minibatch SGD
on its own features, and the server averages the clients' models weighted by
their sample counts n_i (McMahan et al., 2017), with every client taking part
in every round. ``local_update`` is the one client step that both the
in-process loop ``FedAvg`` and the Flower app (``fedavg_client_app``, run by
Flower's own FedAvg strategy) use. Samples are rows: features (n, p), labels (n,).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from distillmem.features import FeatureMap

from .task import Config

LOSSES = ("cross_entropy", "squared")
#: The local-training settings every client gets, as FedAvg's attributes; kebab-case in a Flower ConfigRecord.
SETTINGS = ("local_epochs", "lr", "batch_size", "momentum", "loss", "hidden")


def check_settings(settings: dict[str, Any]) -> None:
    """Refuse local-training settings out of range, naming the setting."""
    for name, low in (("local_epochs", 1), ("batch_size", 1), ("hidden", 0)):
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r}: must be an integer >= {low}")
    for name, positive in (("lr", True), ("momentum", False)):
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise ValueError(f"{name}={value!r}: must be a finite number {'> 0' if positive else '>= 0'}")
    if settings["momentum"] >= 1:
        raise ValueError(f"momentum={settings['momentum']!r}: must be < 1")
    if settings["loss"] not in LOSSES:
        raise ValueError(f"loss={settings['loss']!r}: must be one of {LOSSES}")


def settings_config(cfg: Config, settings: dict[str, Any]) -> dict[str, Any]:
    """The ConfigRecord content of a Flower FedAvg round: the run config and the local settings, kebab-case."""
    return {**cfg.to_mapping(), **{name.replace("_", "-"): settings[name] for name in SETTINGS}}


def split_config(mapping: dict[str, Any]) -> tuple[Config, dict[str, Any], int]:
    """(run config, local settings, server round) from a round's ConfigRecord (``settings_config`` + "server-round")."""
    mapping = dict(mapping)
    server_round = int(mapping.pop("server-round"))
    settings = {name: mapping.pop(name.replace("_", "-")) for name in SETTINGS}
    check_settings(settings)
    return Config.from_mapping(mapping), settings, server_round


class FedAvg:
    """FedAvg with full participation on features phi(x) of a frozen ``feature_map``.

    ``hidden=0`` trains a linear head (k, p) plus bias; ``hidden=h`` a ReLU MLP
    p -> h -> k. ``loss="squared"`` fits one-hot targets (the KRR objective
    without its ridge term), ``"cross_entropy"`` the usual softmax loss.
    After ``fit``: ``history_`` has one dict per round (``round``,
    ``accuracy`` on the evaluation set when given, ``train_loss``), and
    ``model_`` is the final global torch module.
    """

    def __init__(self, feature_map: FeatureMap, *, rounds: int = 50, local_epochs: int = 1, lr: float = 0.05,
                 batch_size: int = 32, momentum: float = 0.0, hidden: int = 0, loss: str = "cross_entropy",
                 seed: int = 0) -> None:
        self.feature_map = feature_map
        self.rounds = rounds
        self.local_epochs = local_epochs
        self.lr = lr
        self.batch_size = batch_size
        self.momentum = momentum
        self.hidden = hidden
        self.loss = loss
        self.seed = seed

    def _check(self) -> None:
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ValueError(f"rounds={self.rounds!r}: must be an integer >= 1")
        check_settings(self.local_settings())

    def fit(self, clients: Sequence[tuple[np.ndarray, np.ndarray]], *, n_classes: int,
            eval_set: tuple[np.ndarray, np.ndarray] | None = None) -> "FedAvg":
        """Train on ``clients``, a list of (x_i (n_i, d), y_i (n_i,) int labels in [0, n_classes))."""
        self._check()
        if len(clients) < 1:
            raise ValueError("clients: need at least one client's (x, y)")
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
            raise ValueError(f"n_classes={n_classes!r}: must be an integer >= 2")
        local = [self._client(i, x, y, n_classes) for i, (x, y) in enumerate(clients)]
        counts = [float(y.shape[0]) for _, y in local]
        evaluation = None if eval_set is None else (features(self.feature_map, eval_set[0]), torch.as_tensor(np.asarray(eval_set[1])))
        model = make_module(local[0][0].shape[1], n_classes, self.hidden, self.seed)
        self.history_: list[dict[str, float]] = []
        for t in range(1, self.rounds + 1):
            updates = [local_update(model, phi, y, self.local_settings(), round_generator(self.seed, t, i))
                       for i, (phi, y) in enumerate(local)]
            model.load_state_dict(weighted_average([state for state, _ in updates], counts))
            entry = {"round": t, "train_loss": float(np.average([loss for _, loss in updates], weights=counts))}
            if evaluation is not None:
                with torch.no_grad():
                    entry["accuracy"] = float((model(evaluation[0]).argmax(1) == evaluation[1]).double().mean())
            self.history_.append(entry)
        self.model_ = model
        return self

    def local_settings(self) -> dict[str, Any]:
        """What every client needs for its local update (``local_update``'s ``settings``)."""
        return {name: getattr(self, name) for name in SETTINGS}

    def parameters_(self) -> dict[str, np.ndarray]:
        """The global model's arrays, float32: what each client uploads once per round."""
        return {name: t.detach().numpy().copy() for name, t in self.model_.state_dict().items()}

    # -- internals ---------------------------------------------------------------------
    def _client(self, i: int, x: np.ndarray, y: np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = np.asarray(y)
        if x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(f"clients[{i}]: x has {x.shape[0]} rows and y {y.shape[0]}; need the same number, at least 1")
        if y.min() < 0 or y.max() >= k:
            raise ValueError(f"clients[{i}]: labels must lie in [0, {k}), got min {y.min()} and max {y.max()}")
        return features(self.feature_map, x), torch.as_tensor(y, dtype=torch.int64)



def features(feature_map: FeatureMap, x: np.ndarray) -> torch.Tensor:
    """phi(x) (n, p) float32 of rows x (n, d), without autograd: what the models train and are scored on."""
    with torch.no_grad():
        return feature_map(torch.as_tensor(np.asarray(x, dtype=np.float32))).to(torch.float32)


def make_module(p: int, k: int, hidden: int, seed: int) -> nn.Module:
    """The global model's start: a linear head (k, p) plus bias, or a ReLU MLP p -> hidden -> k, seeded."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return nn.Linear(p, k) if hidden == 0 else nn.Sequential(nn.Linear(p, hidden), nn.ReLU(), nn.Linear(hidden, k))
    finally:
        torch.random.set_rng_state(generator_state)  # leave the caller's random stream as it was


def round_generator(seed: int, round_: int, client: int) -> torch.Generator:
    """The batch order of one client in one round: fixed by (seed, round, client) alone.

    Any process can rebuild it, so a client running in a Flower worker shuffles
    exactly as the in-process loop does.
    """
    state = np.random.SeedSequence([seed, round_, client]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def local_update(model: nn.Module, phi: torch.Tensor, y: torch.Tensor, settings: dict[str, Any],
                 generator: torch.Generator) -> tuple[dict[str, torch.Tensor], float]:
    """One client's update from the global ``model`` on features phi (n, p) and labels y (n,).

    ``settings``: local_epochs, lr, batch_size, momentum, loss. Returns the
    updated state dict and the mean loss of the last local epoch; ``model``
    itself is left unchanged.
    """
    local = copy.deepcopy(model)
    opt = torch.optim.SGD(local.parameters(), lr=settings["lr"], momentum=settings["momentum"])
    total = 0.0
    for _ in range(settings["local_epochs"]):
        total = 0.0
        for batch in torch.randperm(phi.shape[0], generator=generator).split(settings["batch_size"]):
            scores = local(phi[batch])
            if settings["loss"] == "cross_entropy":
                loss = nn.functional.cross_entropy(scores, y[batch])
            else:
                loss = 0.5 * (scores - nn.functional.one_hot(y[batch], scores.shape[1]).to(scores.dtype)).square().sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * batch.shape[0]
    return {name: t.detach().clone() for name, t in local.state_dict().items()}, total / phi.shape[0]


def weighted_average(states: Sequence[dict[str, torch.Tensor]], counts: Sequence[float]) -> dict[str, torch.Tensor]:
    """The clients' states averaged with weights n_i / sum n (float64 sums, cast back to each tensor's dtype)."""
    weights = torch.tensor(counts, dtype=torch.float64)
    weights = weights / weights.sum()
    return {name: sum(w * s[name].double() for w, s in zip(weights, states)).to(states[0][name].dtype) for name in states[0]}
