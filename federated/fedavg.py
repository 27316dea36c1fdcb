"""FedAvg of a linear head (or a one-hidden-layer MLP) on frozen features, in this process, without Flower.

The baseline the one-shot uploads are measured against: every round each
client starts from the global model, runs ``local_epochs`` of minibatch SGD
on its own features, and the server averages the clients' models weighted by
their sample counts n_i (McMahan et al., 2017), with every client taking part
in every round. Features are computed once per client by the same frozen map
the KRR heads use. Samples are rows: features (n, p), labels (n,).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from distillmem.features import FeatureMap

LOSSES = ("cross_entropy", "squared")


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
        for name, low in (("rounds", 1), ("local_epochs", 1), ("batch_size", 1), ("hidden", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r}: must be an integer >= {low}")
        for name, positive in (("lr", True), ("momentum", False)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or (positive and value == 0):
                raise ValueError(f"{name}={value!r}: must be a finite number {'> 0' if positive else '>= 0'}")
        if self.momentum >= 1:
            raise ValueError(f"momentum={self.momentum!r}: must be < 1")
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r}: must be one of {LOSSES}")

    def fit(self, clients: Sequence[tuple[np.ndarray, np.ndarray]], *, n_classes: int,
            eval_set: tuple[np.ndarray, np.ndarray] | None = None) -> "FedAvg":
        """Train on ``clients``, a list of (x_i (n_i, d), y_i (n_i,) int labels in [0, n_classes))."""
        self._check()
        if len(clients) < 1:
            raise ValueError("clients: need at least one client's (x, y)")
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
            raise ValueError(f"n_classes={n_classes!r}: must be an integer >= 2")
        local = [self._client(i, x, y, n_classes) for i, (x, y) in enumerate(clients)]
        counts = torch.tensor([float(y.shape[0]) for _, y in local], dtype=torch.float64)
        evaluation = None if eval_set is None else (self._features(eval_set[0]), torch.as_tensor(np.asarray(eval_set[1])))
        generator = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)  # the module's initial weights
        model = self._module(local[0][0].shape[1], n_classes)
        self.history_: list[dict[str, float]] = []
        for t in range(1, self.rounds + 1):
            states, losses = [], []
            for phi, y in local:
                state, loss = self._local_train(model, phi, y, n_classes, generator)
                states.append(state)
                losses.append(loss)
            model.load_state_dict({
                name: sum(w * s[name] for w, s in zip(counts / counts.sum(), states)).to(states[0][name].dtype)
                for name in states[0]
            })
            entry = {"round": t, "train_loss": float(np.average(losses, weights=counts.numpy()))}
            if evaluation is not None:
                with torch.no_grad():
                    entry["accuracy"] = float((model(evaluation[0]).argmax(1) == evaluation[1]).double().mean())
            self.history_.append(entry)
        self.model_ = model
        return self

    def parameters_(self) -> dict[str, np.ndarray]:
        """The global model's arrays, float32: what each client uploads once per round."""
        return {name: t.detach().numpy().copy() for name, t in self.model_.state_dict().items()}

    # -- internals ---------------------------------------------------------------------
    def _features(self, x: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return self.feature_map(torch.as_tensor(np.asarray(x, dtype=np.float32))).to(torch.float32)

    def _client(self, i: int, x: np.ndarray, y: np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = np.asarray(y)
        if x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(f"clients[{i}]: x has {x.shape[0]} rows and y {y.shape[0]}; need the same number, at least 1")
        if y.min() < 0 or y.max() >= k:
            raise ValueError(f"clients[{i}]: labels must lie in [0, {k}), got min {y.min()} and max {y.max()}")
        return self._features(x), torch.as_tensor(y, dtype=torch.int64)

    def _module(self, p: int, k: int) -> nn.Module:
        if self.hidden == 0:
            return nn.Linear(p, k)
        return nn.Sequential(nn.Linear(p, self.hidden), nn.ReLU(), nn.Linear(self.hidden, k))

    def _local_train(self, model: nn.Module, phi: torch.Tensor, y: torch.Tensor, k: int,
                     generator: torch.Generator) -> tuple[dict[str, torch.Tensor], float]:
        """One client's update from the global ``model``: (its state dict, mean loss of its last epoch)."""
        local = self._module(phi.shape[1], k)
        local.load_state_dict(model.state_dict())
        opt = torch.optim.SGD(local.parameters(), lr=self.lr, momentum=self.momentum)
        total = 0.0
        for _ in range(self.local_epochs):
            total = 0.0
            for batch in torch.randperm(phi.shape[0], generator=generator).split(self.batch_size):
                scores = local(phi[batch])
                if self.loss == "cross_entropy":
                    loss = nn.functional.cross_entropy(scores, y[batch])
                else:
                    loss = 0.5 * (scores - nn.functional.one_hot(y[batch], k).to(scores.dtype)).square().sum(1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * batch.shape[0]
        return {name: t.detach().clone() for name, t in local.state_dict().items()}, total / phi.shape[0]
