"""The builders' shared convention: method recorded, teacher and argument handling, caller's objects left alone."""

from __future__ import annotations

import inspect

import pytest
import torch
from conftest import _problem

from distillmem import (
    KRR,
    DistilledSet,
    MomentMemory,
    distill,
    distill_approximate,
    distill_deep_linear,
    distill_labels,
    distill_private,
    herding,
    kip,
    random_subset,
)
from distillmem.features import RandomFCNN, RandomLinear

D, K = 12, 3
X, Y = _problem(n=120, d=D, k=K)


def _fcnn() -> RandomFCNN:
    return RandomFCNN(D, seed=1)


def _linear() -> RandomLinear:
    return RandomLinear(D, widths=(20,), seed=2)


# name -> (method recorded, map factory, call(teacher, feature_map, **kwargs)); with teacher=None the
# builder gets the map and fits its own model where it needs one.
BUILDERS = {
    "distill": ("closed_form", _fcnn, lambda t, f, **kw: distill(X, Y, teacher=t, feature_map=f, reg=1e-2, ipc=2, **kw)),
    "distill_labels": ("label_only", _fcnn,
                       lambda t, f, **kw: distill_labels(X[:15], teacher=t, x=X, y=Y, feature_map=f, reg=1e-2, **kw)),
    "distill_deep_linear": ("deep_linear", _linear,
                            lambda t, f, **kw: distill_deep_linear(X, Y, teacher=t, feature_map=f, reg=1e-2, ipc=2, **kw)),
    "distill_approximate": ("approximate", _fcnn,
                            lambda t, f, **kw: distill_approximate(X, Y, teacher=t, feature_map=f, reg=1e-2, ipc=2,
                                                                   steps=2, **kw)),
    "random_subset": ("random", _fcnn, lambda t, f, **kw: random_subset(X, Y, teacher=t, feature_map=f, ipc=2, **kw)),
    "herding": ("herding", _fcnn, lambda t, f, **kw: herding(X, Y, teacher=t, feature_map=f, ipc=2, **kw)),
    "kip": ("kip", _fcnn, lambda t, f, **kw: kip(X, Y, teacher=t, feature_map=f, ipc=2, steps=2, **kw)),
}
PUBLIC = [distill, distill_labels, distill_deep_linear, distill_approximate, distill_private, random_subset, herding, kip]


# -- provenance.method ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BUILDERS))
def test_every_builder_records_its_method(name, tmp_path):
    method, make_map, build = BUILDERS[name]
    s = build(None, make_map())
    assert s.provenance.method == method
    assert DistilledSet.load(s.save(tmp_path / "s.dm")).provenance == s.provenance


def test_private_and_memory_sets_record_their_method():
    assert distill_private(X, Y, ipc=2, epsilon=0.5, delta=1e-5, norm_bound=8.0).provenance.method == "private"
    memory = MomentMemory(_fcnn(), n_classes=K).update(X, Y)
    assert memory.to_distilled_set(1e-2).provenance.method == "moments"


# -- one convention --------------------------------------------------------------------------------------


@pytest.mark.parametrize("builder", PUBLIC, ids=lambda f: f.__name__)
def test_shared_arguments_have_the_same_defaults(builder):
    params = inspect.signature(builder).parameters
    assert params["device"].default is None and params["device"].kind is inspect.Parameter.KEYWORD_ONLY
    expected = {"ipc": 10, "init": "noise", "seed": 0, "progress": False, "teacher": None}
    for name, default in expected.items():
        if name in params:
            assert params[name].default == default, name
            assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    assert "seed" in params or builder is herding  # herding is deterministic
    assert builder is distill_private or "teacher" in params  # the mechanism fits its own model


def test_the_estimator_has_the_same_defaults():
    from distillmem import KRRDistiller

    params = inspect.signature(KRRDistiller).parameters
    assert (params["ipc"].default, params["init"].default, params["seed"].default) == (10, "noise", 0)
    assert (params["device"].default, params["progress"].default) == (None, False)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_an_unfitted_teacher_gives_one_error_for_every_builder(name):
    _, make_map, build = BUILDERS[name]
    with pytest.raises(ValueError) as info:
        build(KRR(make_map(), reg=1.0), None)
    assert str(info.value) == "teacher must be a fitted KRR: call teacher.fit(x, y) first"


@pytest.mark.parametrize("name", list(BUILDERS))
def test_a_teacher_that_is_not_a_krr_is_refused(name):
    _, _, build = BUILDERS[name]
    with pytest.raises(TypeError, match="teacher must be a distillmem KRR, got str"):
        build("model", None)


@pytest.mark.parametrize("name", ["distill", "distill_labels", "distill_deep_linear", "distill_approximate"])
def test_a_given_teacher_is_distilled_rather_than_refitted(name):
    _, make_map, build = BUILDERS[name]
    teacher = KRR(make_map(), reg=1.0).fit(X, Y)
    s = build(teacher, None)
    assert s.provenance.teacher_reg == 1.0  # the builders' reg=1e-2 would fit another model
    assert s.feature_map_spec == teacher.feature_map_.spec()


@pytest.mark.parametrize("call", [
    lambda t: distill(X, Y, teacher=t, n_classes=K + 1),
    lambda t: distill_labels(X[:15], teacher=t, n_classes=K + 1),
    lambda t: random_subset(X, Y, teacher=t, n_classes=K + 1),
    lambda t: kip(X, Y, teacher=t, n_classes=K + 1, steps=1),
], ids=["distill", "distill_labels", "random_subset", "kip"])
def test_n_classes_must_agree_with_the_teacher(call):
    with pytest.raises(ValueError, match=f"n_classes={K + 1} differs from the teacher's {K} classes"):
        call(KRR(_fcnn(), reg=1e-2).fit(X, Y))


# -- the caller's feature map and teacher are not moved ----------------------------------------------------


@pytest.fixture
def moves(monkeypatch):
    """Every module that .to() or a move/cast (``_apply``) is called on, in call order."""
    seen = []
    to, apply = torch.nn.Module.to, torch.nn.Module._apply

    def spy_to(self, *args, **kwargs):
        seen.append(self)
        return to(self, *args, **kwargs)

    def spy_apply(self, *args, **kwargs):
        seen.append(self)
        return apply(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", spy_to)
    monkeypatch.setattr(torch.nn.Module, "_apply", spy_apply)
    return seen


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in module.state_dict().items()}


def _unchanged(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    now = module.state_dict()
    return now.keys() == state.keys() and all(
        now[k].device == state[k].device and now[k].dtype == state[k].dtype and torch.equal(now[k], state[k])
        for k in state
    )


@pytest.mark.parametrize("name", list(BUILDERS))
def test_the_callers_teacher_and_map_are_not_moved(name, moves):
    _, make_map, build = BUILDERS[name]
    fmap = make_map()
    teacher = KRR(fmap, reg=1e-2).fit(X, Y)
    state, weights = _state(fmap), teacher.weights_.clone()
    moves.clear()
    build(teacher, None, device="cpu")
    assert not any(module is fmap for module in moves)
    assert teacher.feature_map_ is fmap and _unchanged(fmap, state)
    assert torch.equal(teacher.weights_, weights) and teacher.weights_.device.type == "cpu"


@pytest.mark.parametrize("name", list(BUILDERS))
def test_the_callers_map_is_not_moved_when_the_builder_fits_its_own_model(name, moves):
    _, make_map, build = BUILDERS[name]
    fmap = make_map()
    state = _state(fmap)
    build(None, fmap, device="cpu")
    assert not any(module is fmap for module in moves)
    assert _unchanged(fmap, state)


# -- argument checks ------------------------------------------------------------------------------------------


CALLS_WITH_REG_S = {
    "distill": lambda **kw: distill(X, Y, reg=1e-2, ipc=2, **kw),
    "distill_labels": lambda **kw: distill_labels(X[:15], x=X, y=Y, reg=1e-2, **kw),
    "distill_approximate": lambda **kw: distill_approximate(X, Y, reg=1e-2, ipc=2, steps=2, **kw),
    "random_subset": lambda **kw: random_subset(X, Y, ipc=2, **kw),
    "herding": lambda **kw: herding(X, Y, ipc=2, **kw),
}


@pytest.mark.parametrize("name", list(CALLS_WITH_REG_S))
def test_reg_s_none_is_a_clear_error(name):
    with pytest.raises(TypeError, match=r"reg_s must be a real number, got None \(NoneType\)"):
        CALLS_WITH_REG_S[name](reg_s=None)


@pytest.mark.parametrize(
    "call",
    [
        lambda **kw: distill(X, Y, reg=1e-2, ipc=2, **kw),
        lambda **kw: distill_approximate(X, Y, reg=1e-2, ipc=2, steps=2, **kw),
        lambda **kw: distill_deep_linear(X, Y, feature_map=_linear(), reg=1e-2, ipc=2, **kw),
    ],
    ids=["distill", "distill_approximate", "distill_deep_linear"],
)
@pytest.mark.parametrize("noise_scale", [float("inf"), float("nan")])
def test_noise_scale_must_be_finite(call, noise_scale):
    with pytest.raises(ValueError, match=r"noise_scale must be a finite number"):
        call(noise_scale=noise_scale)


@pytest.mark.parametrize(
    "call",
    [
        lambda ipc: distill(X, Y, reg=1e-2, ipc=ipc),
        lambda ipc: distill_deep_linear(X, Y, feature_map=_linear(), reg=1e-2, ipc=ipc),
        lambda ipc: distill_approximate(X, Y, reg=1e-2, ipc=ipc, steps=2),
        lambda ipc: distill_private(X, Y, ipc=ipc, epsilon=0.5, delta=1e-5, norm_bound=8.0),
        lambda ipc: random_subset(X, Y, ipc=ipc),
        lambda ipc: herding(X, Y, ipc=ipc),
        lambda ipc: kip(X, Y, ipc=ipc, steps=1),
    ],
    ids=["distill", "distill_deep_linear", "distill_approximate", "distill_private", "random_subset", "herding", "kip"],
)
@pytest.mark.parametrize("ipc", [True, 2.0])
def test_ipc_must_be_an_integer_not_a_bool_or_float(call, ipc):
    with pytest.raises(TypeError, match=f"ipc must be an integer, got {ipc}"):
        call(ipc)
