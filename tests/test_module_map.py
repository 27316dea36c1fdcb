"""Tests for ModuleMap (a frozen user module as phi) and distill_approximate (non-surjective route)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from distillmem import KRR, DistilledSet, KRRDistiller
from distillmem.features import ModuleMap, RandomFCNN, from_spec
from distillmem.nonsurjective import distill_approximate

D, P = 12, 24


def mlp(seed: int = 0, d: int = D, p: int = P) -> nn.Module:
    with torch.random.fork_rng():  # seeded weights without touching the global RNG
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(d, p), nn.Tanh(), nn.Linear(p, p)).double()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


@pytest.fixture(scope="module")
def fitted():
    """A 4-class problem in R^12, its ModuleMap (p = 24 > d) and a fitted teacher."""
    gen = torch.Generator().manual_seed(0)
    means = 1.5 * torch.randn(4, D, generator=gen, dtype=torch.float64)
    y = torch.arange(200) % 4
    x = means[y] + torch.randn(200, D, generator=gen, dtype=torch.float64)
    fmap = ModuleMap(mlp(), D, steps=60)
    teacher = KRR(fmap, reg=1e-2).fit(x, y)
    return x, y, fmap, teacher


# -- the map ----------------------------------------------------------------------


def test_forward_flattens_and_keeps_input_dtype():
    fmap = ModuleMap(mlp(), D)
    assert fmap.out_features(D) == P and not fmap.surjective
    x = torch.randn(5, D, dtype=torch.float64)
    assert torch.equal(fmap(x), fmap.module(x))
    assert fmap(x.float()).dtype == torch.float32
    assert all(not p.requires_grad for p in fmap.module.parameters())


def test_float32_module_runs_in_float32_and_returns_the_input_dtype():
    fmap = ModuleMap(mlp().float(), D, steps=20)
    assert fmap.compute_dtype == torch.float32
    x = torch.randn(5, D, dtype=torch.float64)
    out = fmap(x)
    assert out.dtype == torch.float64
    assert torch.equal(out, fmap.module(x.float()).double())
    points, residual = fmap.preimage_with_residual(out)
    assert points.dtype == torch.float64 and residual < 0.5


def test_input_shape_feeds_image_modules():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh()).double()
    fmap = ModuleMap(conv, 36, input_shape=(1, 6, 6))
    x = torch.randn(3, 36, dtype=torch.float64)
    assert fmap.p == 2 * 4 * 4
    assert torch.equal(fmap(x), conv(x.reshape(3, 1, 6, 6)).reshape(3, -1))
    with pytest.raises(ValueError, match="input_shape"):
        ModuleMap(conv, 35, input_shape=(1, 6, 6))


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_residual_decreases_with_more_steps(optimizer):
    fmap = ModuleMap(mlp(), D, optimizer=optimizer, seed=1)
    target = fmap(torch.randn(6, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    residuals = [fmap.preimage_with_residual(target, steps=steps)[1] for steps in (5, 40, 150)]
    assert residuals[0] > residuals[1] > residuals[2]
    assert fmap.last_residual_ == residuals[2]
    assert len(fmap.last_history_) >= 150 and fmap.last_history_[-1] <= fmap.last_history_[0]
    if optimizer == "lbfgs":
        assert residuals[2] < 1e-3  # features in the range: L-BFGS gets close


def test_preimage_from_a_given_start_and_reported_residual():
    fmap = ModuleMap(mlp(), D, steps=30)
    truth = torch.randn(4, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    target = fmap(truth)
    x = fmap.preimage(target, init=truth)
    assert fmap.last_residual_ < 1e-12
    assert rel(x, truth) < 1e-10
    _, residual = fmap.preimage_with_residual(target)
    assert residual == pytest.approx(rel(fmap(fmap.preimage(target)), target))


def test_preimage_is_seeded():
    a = ModuleMap(mlp(), D, steps=10, seed=4)
    b = ModuleMap(mlp(), D, steps=10, seed=4)
    target = a(torch.randn(3, D, dtype=torch.float64))
    assert torch.equal(a.preimage(target), b.preimage(target))


# -- bad modules -------------------------------------------------------------------


class Constant(nn.Module):
    def forward(self, x):
        return torch.ones(x.shape[0], 3, dtype=x.dtype)


class Rounded(nn.Module):  # depends on x, but its Jacobian is zero
    def forward(self, x):
        return torch.round(4 * x)


class Detached(nn.Module):
    def forward(self, x):
        return torch.tanh(x.detach())


class BatchSum(nn.Module):
    def forward(self, x):
        return x.sum(dim=0)


class Pair(nn.Module):
    def forward(self, x):
        return x, x


class Integer(nn.Module):
    def forward(self, x):
        return (x > 0).long()


@pytest.mark.parametrize(
    "module, match",
    [
        (Constant(), "does not depend on its input"),
        (Rounded(), "Jacobian .* is zero"),
        (Detached(), "not differentiable"),
        (BatchSum(), "batch dimension"),
        (Pair(), "must return a tensor"),
        (Integer(), "floating-point"),
    ],
)
def test_bad_modules_are_rejected(module, match):
    with pytest.raises(ValueError, match=match):
        ModuleMap(module, D)


def test_bad_arguments():
    with pytest.raises(ValueError, match="out_features=30"):
        ModuleMap(mlp(), D, out_features=30)
    with pytest.raises(TypeError, match="nn.Module"):
        ModuleMap(lambda x: x, D)
    with pytest.raises(ValueError, match="in_features"):
        ModuleMap(mlp(), 0)
    with pytest.raises(ValueError, match="optimizer"):
        ModuleMap(mlp(), D, optimizer="sgd")
    with pytest.raises(RuntimeError):  # the module itself rejects the width
        ModuleMap(mlp(), D + 1)
    fmap = ModuleMap(mlp(), D)
    with pytest.raises(ValueError, match=r"\(n, 24\)"):
        fmap.preimage(torch.zeros(2, 23, dtype=torch.float64))


# -- spec and saving ------------------------------------------------------------------


def test_spec_describes_but_does_not_rebuild(tmp_path, fitted):
    x, y, fmap, teacher = fitted
    spec = json.loads(json.dumps(fmap.spec()))
    assert spec["name"] == "module" and spec["params"]["out_features"] == P
    assert "Linear(in_features=12" in spec["params"]["description"]
    with pytest.raises(ValueError, match="must be supplied|Supply it yourself"):
        from_spec(spec)
    rebuilt = ModuleMap.rebuild(spec, fmap.module)
    assert rebuilt.spec() == fmap.spec()
    with pytest.raises(ValueError, match="fingerprint"):
        ModuleMap.rebuild(spec, mlp(seed=1))
    assert ModuleMap.rebuild(spec, mlp(seed=1), check_fingerprint=False).p == P

    distilled = distill_approximate(x, y, teacher=teacher, ipc=2)
    path = distilled.save(tmp_path / "module.safetensors")
    loaded = DistilledSet.load(path)
    assert loaded.feature_map_spec == distilled.feature_map_spec
    assert loaded.provenance.extras["feature_residual"] == distilled.provenance.extras["feature_residual"]
    with pytest.raises(ValueError, match="Supply it yourself"):
        loaded.fit_krr()
    # With the module supplied, the saved set refits to the recorded error.
    student = KRR(ModuleMap.rebuild(loaded.feature_map_spec, fmap.module), reg=loaded.reg, n_classes=4).fit(loaded.x, loaded.y)
    assert rel(student.weights_, teacher.weights_) == pytest.approx(loaded.recovery_error, rel=1e-6, abs=1e-12)


def test_exact_distiller_refuses_module_maps(fitted):
    x, y, fmap, teacher = fitted
    with pytest.raises(ValueError, match="not surjective"):
        KRRDistiller(ipc=2).fit(x, y, teacher=teacher)


# -- approximate distillation ---------------------------------------------------------


@pytest.mark.parametrize("init", ["noise", "real"])
def test_label_step_reduces_the_weight_error(fitted, init):
    x, y, fmap, teacher = fitted
    with_labels = distill_approximate(x, y, teacher=teacher, ipc=2, init=init, seed=1)
    without = distill_approximate(x, y, teacher=teacher, ipc=2, init=init, seed=1, solve_labels=False)
    prov = with_labels.provenance
    assert prov.recovery_error < prov.extras["recovery_error_before_labels"]
    assert prov.recovery_error < 0.9 * without.provenance.recovery_error
    assert without.provenance.recovery_error == pytest.approx(prov.extras["recovery_error_before_labels"])
    # The recorded errors are those of a refit on the returned set.
    student = KRR(fmap, reg=with_labels.reg, n_classes=4).fit(with_labels.x, with_labels.y)
    assert rel(student.weights_, teacher.weights_) == pytest.approx(prov.recovery_error, rel=1e-6)
    assert 0 <= prov.extras["feature_residual"] and prov.method == "approximate"
    assert with_labels.labels.tolist() == [0, 1, 2, 3] * 2


def test_enough_points_make_the_label_step_exact(fitted):
    # m = 4 * 8 = 32 >= p = 24: Theorem 4.2 in feature space gives W_S = W whatever the preimage error.
    x, y, fmap, teacher = fitted
    distilled = distill_approximate(x, y, teacher=teacher, ipc=8, init="noise", steps=5)
    assert distilled.provenance.extras["feature_residual"] > 1e-3
    assert distilled.provenance.recovery_error < 1e-8


def test_wraps_a_non_surjective_feature_map():
    gen = torch.Generator().manual_seed(1)
    y = torch.arange(120) % 3
    x = torch.randn(3, 8, generator=gen, dtype=torch.float64)[y] + torch.randn(120, 8, generator=gen, dtype=torch.float64)
    fmap = RandomFCNN(8, widths=(16,), seed=0)  # expanding: Theorem 5.2 setting
    teacher = KRR(fmap, reg=1e-2).fit(x, y)
    distilled = distill_approximate(x, y, teacher=teacher, ipc=2, init="real", steps=40)
    assert distilled.feature_map_spec == fmap.spec()
    prov = distilled.provenance
    assert prov.recovery_error <= prov.extras["recovery_error_before_labels"]
    assert rel(distilled.fit_krr().weights_, teacher.weights_) == pytest.approx(prov.recovery_error, rel=1e-6)


def test_approximate_argument_checks(fitted):
    x, y, fmap, teacher = fitted
    with pytest.raises(ValueError, match="fitted KRR"):
        distill_approximate(x, y, teacher=KRR(fmap), ipc=1)
    with pytest.raises(ValueError, match="real data"):
        distill_approximate(None, None, teacher=teacher, ipc=1, init="real")
    with pytest.raises(ValueError, match="ipc"):
        distill_approximate(x, y, teacher=teacher, ipc=0)
    with pytest.raises(ValueError, match="init"):
        distill_approximate(x, y, teacher=teacher, ipc=1, init="zeros")


def test_preimage_start_follows_the_seed():
    # Few steps, so the result still depends on where the search started.
    target = mlp()(torch.randn(3, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    results = {seed: ModuleMap(mlp(), D, steps=3, seed=seed).preimage(target) for seed in (4, 5)}
    assert torch.equal(ModuleMap(mlp(), D, steps=3, seed=4).preimage(target), results[4])
    assert rel(results[4], results[5]) > 1e-3
    # The seed is part of the spec: a rebuilt map keeps it.
    rebuilt = ModuleMap.rebuild(ModuleMap(mlp(), D, steps=3, seed=5).spec(), mlp())
    assert torch.equal(rebuilt.preimage(target), results[5])
