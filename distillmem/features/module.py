"""A frozen user torch module as a feature map.

``ModuleMap`` wraps any module mapping (n, d) -> (n, ...) (a frozen backbone,
for example); its output is flattened to (n, p). It has no exact inverse, so
``surjective`` is False and ``preimage`` is approximate: it minimises
||phi(x) - F||^2 over x by L-BFGS or Adam and reports the remaining relative
feature residual.

``distillmem.distill_approximate`` (in ``distillmem.nonsurjective``) distils
with such maps: the Theorem 5.1 target features, this optimised preimage,
then least-squares labels on the features actually reached.

Serialization: a module cannot be rebuilt from JSON, so ``spec()`` records a
description instead: the module's class, its (truncated) repr and a sha256
fingerprint of its state. A DistilledSet made with a ModuleMap saves and loads
normally, but ``from_spec`` on that spec raises a ValueError that asks for
the module; ``ModuleMap.rebuild(spec, module)`` takes it and checks the
fingerprint.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._validation import check_int, check_real
from .base import FeatureMap, check_width

OPTIMIZERS = ("lbfgs", "adam")
_DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.05}
_DESCRIPTION_CHARS = 2000


def module_fingerprint(module: nn.Module) -> str:
    """sha256 over the module's class name and its state (names, dtypes, shapes, bytes)."""
    sha = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    state = module.state_dict()
    if not state:
        sha.update(repr(module).encode())
    for key, value in state.items():
        sha.update(key.encode())
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            sha.update(f"{t.dtype}{tuple(t.shape)}".encode())
            sha.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            sha.update(repr(value).encode())
    return sha.hexdigest()


class ModuleMap(FeatureMap):
    """phi(x) = flatten(module(x)) for a frozen user module; approximate preimage by optimisation.

    The module is frozen in place (``requires_grad_(False)``, ``eval()``) and
    registered as a submodule, so moving the map moves the module. It runs in
    the dtype of its floating parameters (inputs are cast to it and outputs
    cast back to the input dtype); use ``module.double()`` for float64
    features, as the exactness checks of KRR and distillation assume.

    Parameters
    ----------
    module : torch.nn.Module
    in_features : int
        d; inputs are (n, d), reshaped to (n, *input_shape) for the module.
    out_features : int, optional
        Expected p; checked against the module's output.
    input_shape : sequence of int, optional
        Per-sample shape the module expects (e.g. (C, H, W)); default (d,).
    steps : int
        Optimiser iterations of ``preimage``.
    lr : float, optional
        Step size; default 1.0 for L-BFGS, 0.05 for Adam.
    optimizer : {"lbfgs", "adam"}
    init_scale : float
        Standard deviation of the seeded N(0, 1) start of ``preimage``.
    seed : int
        Seeds the probe inputs and the start of ``preimage``.

    Attributes
    ----------
    last_residual_ : float
        ||phi(x) - F||_F / ||F||_F of the last ``preimage``.
    last_history_ : list of float
        The best relative residual so far after each objective evaluation of
        the last ``preimage`` (one per Adam step; L-BFGS also counts its
        line-search evaluations).
    """

    name = "module"

    def __init__(
        self,
        module: nn.Module | None = None,
        in_features: int | None = None,
        out_features: int | None = None,
        *,
        input_shape: Sequence[int] | None = None,
        steps: int = 200,
        lr: float | None = None,
        optimizer: str = "lbfgs",
        init_scale: float = 1.0,
        seed: int = 0,
        description: str | None = None,
        module_class: str | None = None,
        fingerprint: str | None = None,
    ) -> None:
        super().__init__()
        if module is None:
            what = f" ({module_class}: {description[:200]}{'...' if len(description) > 200 else ''})" if description else ""
            raise ValueError(
                f"a ModuleMap cannot be rebuilt from its spec alone: the module{what} is not stored. "
                "Supply it yourself: ModuleMap.rebuild(spec, module), or ModuleMap(module, in_features)"
            )
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        in_features = check_int(in_features, "in_features", minimum=1)
        shape = (in_features,) if input_shape is None else tuple(
            check_int(s, f"input_shape[{i}]", minimum=1) for i, s in enumerate(input_shape)
        )
        if math.prod(shape) != in_features:
            raise ValueError(f"input_shape {tuple(input_shape)} has {math.prod(shape)} entries, in_features is {in_features}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        module.requires_grad_(False)
        module.eval()
        self.module = module
        self.in_features = in_features
        self.input_shape = shape
        self.steps = check_int(steps, "steps", minimum=1)
        self.lr = None if lr is None else check_real(lr, "lr", positive=True)
        self.optimizer = optimizer
        self.init_scale = check_real(init_scale, "init_scale", positive=True)
        self._seed = check_int(seed, "seed")
        self._fingerprint: str | None = None
        self.p = self._probe(out_features)
        self.last_residual_: float | None = None
        self.last_history_: list[float] = []

    # -- checks ------------------------------------------------------------
    def _probe(self, out_features: int | None) -> int:
        """Run the module on seeded random inputs: output shape, finiteness and input dependence."""
        gen = torch.Generator().manual_seed(self._seed)
        dtype = self.compute_dtype or torch.float64
        device = self._module_device()
        x1, x2 = (torch.randn(2, self.in_features, generator=gen, dtype=torch.float64).to(device, dtype) for _ in range(2))
        x1.requires_grad_(True)
        with torch.enable_grad():
            out1 = self._run(x1, check=True)
        out2 = self._run(x2, check=True).detach()
        p = out1.shape[1]
        if out_features is not None and check_int(out_features, "out_features", minimum=1) != p:
            raise ValueError(f"the module maps (n, {self.in_features}) inputs to {p} features per sample, not out_features={out_features}")
        if not bool(torch.isfinite(out1).all() and torch.isfinite(out2).all()):
            raise ValueError("the module returns NaN or Inf on standard normal inputs")
        if torch.equal(out1.detach(), out2):
            raise ValueError(
                "the module's output does not depend on its input (the same features for two different random "
                "inputs), so it cannot serve as a feature map"
            )
        if not out1.requires_grad:
            raise ValueError(
                "the module's output is not differentiable with respect to its input (detached or computed "
                "under no_grad), so preimages cannot be found by optimisation"
            )
        direction = torch.randn(out1.shape, generator=gen, dtype=torch.float64).to(device, out1.dtype)
        (grad,) = torch.autograd.grad((out1 * direction).sum(), x1, allow_unused=True)
        if grad is None or not bool((grad != 0).any()):
            raise ValueError(
                "the module's Jacobian with respect to its input is zero at random inputs, so its output does not "
                "depend on its input there and preimages cannot be found by optimisation"
            )
        return p

    def _module_device(self) -> torch.device:
        for t in list(self.module.parameters()) + list(self.module.buffers()):
            return t.device
        return torch.device("cpu")

    @property
    def compute_dtype(self) -> torch.dtype | None:
        """The dtype the module runs in: that of its first floating parameter or buffer (None if it has none)."""
        for t in list(self.module.parameters()) + list(self.module.buffers()):
            if t.is_floating_point():
                return t.dtype
        return None

    def _run(self, x: torch.Tensor, check: bool = False) -> torch.Tensor:
        n = x.shape[0]
        dtype = self.compute_dtype
        inp = x.reshape(n, *self.input_shape)
        if dtype is not None and inp.dtype != dtype:
            inp = inp.to(dtype)
        out = self.module(inp)
        if check:
            if not isinstance(out, torch.Tensor):
                raise ValueError(f"the module must return a tensor, got {type(out).__name__}")
            if out.ndim < 1 or out.shape[0] != n:
                raise ValueError(
                    f"the module must keep the batch dimension: (n={n}, ...) inputs gave output of shape {tuple(out.shape)}"
                )
            if not out.is_floating_point():
                raise ValueError(f"the module must return floating-point features, got dtype {out.dtype}")
            if out[0].numel() == 0:
                raise ValueError(f"the module returns no features (output shape {tuple(out.shape)})")
        return out.reshape(n, -1)

    # -- FeatureMap contract -------------------------------------------------
    def out_features(self, in_features: int) -> int:
        return self.p

    @property
    def surjective(self) -> bool:
        return False

    def check_input(self, x: torch.Tensor) -> None:
        check_width(x, self.in_features, "ModuleMap")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._run(x)
        if out.shape[1] != self.p:
            raise ValueError(f"the module returned {out.shape[1]} features per sample, expected {self.p}")
        return out.to(x.dtype)

    def preimage(self, features: torch.Tensor, *, init: torch.Tensor | None = None, steps: int | None = None) -> torch.Tensor:
        """Approximate x (m, d) with phi(x) ~ features (m, p); the residual is in ``last_residual_``."""
        return self.preimage_with_residual(features, init=init, steps=steps)[0]

    def preimage_with_residual(
        self,
        features: torch.Tensor,
        *,
        init: torch.Tensor | None = None,
        steps: int | None = None,
        lr: float | None = None,
        optimizer: str | None = None,
    ) -> tuple[torch.Tensor, float]:
        """(x, residual): the best x found and ||phi(x) - F||_F / ||F||_F.

        Starts from ``init`` (m, d) or from ``init_scale`` * N(0, 1) drawn from
        ``seed``; runs ``steps`` iterations in the module's dtype and on its
        device; keeps the best iterate. x has the dtype and device of
        ``features``; the residual is measured in the module's dtype.
        """
        check_width(features, self.p, "ModuleMap.preimage")
        steps = self.steps if steps is None else check_int(steps, "steps", minimum=1)
        optimizer = self.optimizer if optimizer is None else optimizer
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        lr = check_real(lr, "lr", positive=True) if lr is not None else self.lr if self.lr is not None else _DEFAULT_LR[optimizer]
        m = features.shape[0]
        dtype = self.compute_dtype or features.dtype
        device = self._module_device() if self.compute_dtype is not None else features.device
        target = features.detach().to(device=device, dtype=dtype)
        if init is None:
            gen = torch.Generator().manual_seed(self._seed)
            start = self.init_scale * torch.randn(m, self.in_features, generator=gen, dtype=torch.float64)
        else:
            start = torch.as_tensor(init).detach().reshape(m, -1)
            check_width(start, self.in_features, "ModuleMap.preimage init")
        x = start.to(device=device, dtype=dtype).clone().requires_grad_(True)
        scale = float((target**2).sum()) or 1.0
        best = {"loss": math.inf, "x": x.detach().clone()}
        history: list[float] = []

        def objective() -> torch.Tensor:
            loss = ((self._run(x) - target) ** 2).sum() / scale
            value = float(loss.detach())
            if value < best["loss"]:
                best["loss"], best["x"] = value, x.detach().clone()
            return loss

        with torch.enable_grad():
            if optimizer == "adam":
                opt = torch.optim.Adam([x], lr=lr)
                for _ in range(steps):
                    opt.zero_grad()
                    objective().backward()
                    opt.step()
                    history.append(math.sqrt(best["loss"]))
            else:
                opt = torch.optim.LBFGS(
                    [x], lr=lr, max_iter=steps, max_eval=2 * steps, tolerance_grad=0.0, tolerance_change=0.0,
                    history_size=50, line_search_fn="strong_wolfe",
                )

                def closure() -> torch.Tensor:
                    opt.zero_grad()
                    loss = objective()
                    loss.backward()
                    history.append(math.sqrt(best["loss"]))
                    return loss

                opt.step(closure)
            objective()  # the final iterate too
        with torch.no_grad():
            reached = self._run(best["x"]).to(torch.float64)
            residual = float(torch.linalg.norm(reached - target.to(torch.float64)))
        residual /= float(torch.linalg.norm(target.to(torch.float64))) or 1.0
        points = best["x"].to(device=features.device, dtype=features.dtype)
        self.last_residual_ = residual
        self.last_history_ = history
        return points, residual

    # -- serialization ------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """sha256 of the module's class and state (computed once: the module is frozen)."""
        if self._fingerprint is None:
            self._fingerprint = module_fingerprint(self.module)
        return self._fingerprint

    def spec_params(self) -> dict[str, Any]:
        """A description, not a recipe: ``from_spec`` on it raises and asks for the module."""
        text = repr(self.module)
        if len(text) > _DESCRIPTION_CHARS:
            text = text[:_DESCRIPTION_CHARS] + "..."
        return {
            "in_features": self.in_features,
            "out_features": self.p,
            "input_shape": list(self.input_shape),
            "steps": self.steps,
            "lr": self.lr,
            "optimizer": self.optimizer,
            "init_scale": self.init_scale,
            "module_class": f"{type(self.module).__module__}.{type(self.module).__qualname__}",
            "description": text,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def rebuild(cls, spec: dict[str, Any], module: nn.Module, *, check_fingerprint: bool = True) -> "ModuleMap":
        """The ModuleMap of ``spec`` around the user-supplied ``module``.

        With ``check_fingerprint`` a module whose class or state differs from
        the one recorded in the spec raises ValueError.
        """
        if not isinstance(spec, dict) or spec.get("name") != cls.name:
            raise ValueError(f"not a ModuleMap spec: {spec!r}")
        params = dict(spec.get("params", {}))
        recorded = params.pop("fingerprint", None)
        params.pop("description", None)
        params.pop("module_class", None)
        fmap = cls(module, seed=spec.get("seed") or 0, **params)
        if check_fingerprint and recorded is not None and fmap.fingerprint != recorded:
            raise ValueError(
                "the module differs from the one the spec was made with (class or weights fingerprint mismatch); "
                "pass check_fingerprint=False to use it anyway"
            )
        return fmap

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.p}, optimizer={self.optimizer!r}, steps={self.steps}, seed={self.seed}"
