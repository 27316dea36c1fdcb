"""Baselines (random subset, herding, KIP): valid DistilledSets, correctness against references, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

import distillmem
from distillmem import KRR, DistilledSet
from distillmem.baselines import KIP_REG_SCALE, herding, herding_indices, kip, random_subset
from distillmem.features import Identity, RandomFCNN, RandomFourier

K, D, IPC = 3, 12, 3


@pytest.fixture
def small(make_problem):
    """x (90, 12) float64, y (90,) with 3 classes of 30 points, and a FCNN map."""
    x, y = make_problem(n=90, d=D, k=K, seed=1, task=2)
    return x, y, RandomFCNN(D, seed=3)


def _kip(x, y, fmap, **kw):
    params = dict(ipc=IPC, feature_map=fmap, steps=5, batch_size=1000, dtype=torch.float64, init="real")
    params.update(kw)
    return kip(x, y, **params)


METHODS = {
    "random": lambda x, y, fmap, **kw: random_subset(x, y, ipc=kw.pop("ipc", IPC), feature_map=fmap, **kw),
    "herding": lambda x, y, fmap, **kw: herding(x, y, ipc=kw.pop("ipc", IPC), feature_map=fmap, **kw),
    "kip": _kip,
}


def _check_layout(s: DistilledSet, k: int, ipc: int, d: int) -> None:
    m = k * ipc
    assert s.x.shape == (m, d) and s.x.dtype == torch.float64
    assert s.y.shape == (m, k) and s.y.dtype == torch.float64
    assert torch.equal(s.labels, torch.arange(m) % k)
    assert s.n_classes == k
    assert s.provenance.seconds >= 0
    assert torch.isfinite(s.x).all() and torch.isfinite(s.y).all()


# -- every method ------------------------------------------------------------
@pytest.mark.parametrize("method", list(METHODS))
def test_valid_distilled_set(method, small):
    x, y, fmap = small
    s = METHODS[method](x, y, fmap)
    _check_layout(s, K, IPC, D)
    assert s.provenance.method == method
    assert s.provenance.recovery_error is None
    assert s.feature_map_spec == fmap.spec()
    assert s.reg >= 0
    # The set is usable under the common protocol: a KRR head refit on it.
    assert s.fit_krr().predict(x).shape == (x.shape[0],)


@pytest.mark.parametrize("method", ["random", "herding"])
def test_real_points_are_rows_of_their_class(method, small):
    x, y, fmap = small
    s = METHODS[method](x, y, fmap)
    idx = torch.tensor(s.provenance.extras["indices"])
    assert idx.unique().numel() == idx.numel()
    assert torch.equal(s.x, x[idx])
    assert torch.equal(y[idx], s.labels)
    assert torch.equal(s.y, torch.nn.functional.one_hot(s.labels, K).to(torch.float64))


@pytest.mark.parametrize("method", list(METHODS))
def test_deterministic_under_seed(method, small):
    x, y, fmap = small
    seeded = {} if method == "herding" else {"seed": 5}
    a, b = METHODS[method](x, y, fmap, **seeded), METHODS[method](x, y, fmap, **seeded)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and a.reg == b.reg


@pytest.mark.parametrize("method", ["random", "kip"])
def test_seed_changes_the_set(method, small):
    x, y, fmap = small
    a, b = METHODS[method](x, y, fmap, seed=0), METHODS[method](x, y, fmap, seed=1)
    assert not torch.equal(a.x, b.x)


@pytest.mark.parametrize("method", list(METHODS))
def test_save_load_round_trip(method, small, tmp_path):
    x, y, fmap = small
    teacher = KRR(fmap, reg=1e-2).fit(x, y)
    s = METHODS[method](x, y, fmap, teacher=teacher, dataset="toy")
    loaded = DistilledSet.load(s.save(tmp_path / f"{method}.safetensors"))
    assert torch.equal(loaded.x, s.x) and torch.equal(loaded.y, s.y) and torch.equal(loaded.labels, s.labels)
    assert loaded.reg == s.reg and loaded.feature_map_spec == s.feature_map_spec
    assert loaded.provenance == s.provenance
    assert loaded.recovery_error == s.recovery_error


@pytest.mark.parametrize("method", list(METHODS))
def test_recovery_error_against_teacher(method, small, rel_err):
    x, y, fmap = small
    teacher = KRR(fmap, reg=1e-2).fit(x, y)
    s = METHODS[method](x, y, None, teacher=teacher)  # the teacher's map is used
    assert s.feature_map_spec == fmap.spec()
    student = KRR(s.feature_map(), reg=s.reg, n_classes=K).fit(s.x, s.y)
    expected = rel_err(student.weights_, teacher.weights_)
    assert s.recovery_error == pytest.approx(expected, rel=1e-9)
    assert s.recovery_error > 1e-3  # m = 9 < p = 12 real points cannot give back W


@pytest.mark.parametrize("method", list(METHODS))
def test_images_and_targets_inputs(method, small):
    x, y, fmap = small
    images = x.reshape(-1, 3, 2, 2)  # (n, C, H, W)
    targets = torch.nn.functional.one_hot(y, K).to(torch.float64)
    s = METHODS[method](images, targets, fmap, mean=(0.1, 0.2, 0.3), std=(1.0, 1.0, 2.0))
    _check_layout(s, K, IPC, D)
    assert s.image_shape == (3, 2, 2) and s.mean == (0.1, 0.2, 0.3)
    assert s.images().shape == (K * IPC, 3, 2, 2)


def test_numpy_inputs(small):
    x, y, fmap = small
    a = random_subset(x.numpy(), y.numpy(), ipc=2, feature_map=fmap, seed=4)
    b = random_subset(x, y, ipc=2, feature_map=fmap, seed=4)
    assert torch.equal(a.x, b.x)
    assert torch.equal(herding(x.numpy(), y.numpy(), ipc=2, feature_map=fmap).x, herding(x, y, ipc=2, feature_map=fmap).x)


def test_exports():
    assert distillmem.random_subset is random_subset
    assert distillmem.herding is herding and distillmem.kip is kip
    assert {"random_subset", "herding", "kip"} <= set(distillmem.__all__)


# -- herding -----------------------------------------------------------------
def _naive_herding(features: torch.Tensor, count: int) -> list[int]:
    """Literal Welling herding: try every unused point, keep the first minimiser."""
    mu = features.mean(dim=0)
    chosen: list[int] = []
    for t in range(count):
        total = features[chosen].sum(dim=0) if chosen else torch.zeros_like(mu)
        best, best_dist = None, math.inf
        for i in range(features.shape[0]):
            if i in chosen:
                continue
            dist = float(torch.linalg.norm(mu - (total + features[i]) / (t + 1)))
            if dist < best_dist:
                best, best_dist = i, dist
        chosen.append(best)
    return chosen


def test_herding_matches_naive_reference(make_problem):
    x, y = make_problem(n=40, d=6, k=2, seed=3)
    fmap = RandomFCNN(6, seed=1)
    s = herding(x, y, ipc=5, feature_map=fmap)
    for c in range(2):
        members = (y == c).nonzero().flatten()
        expected = members[_naive_herding(fmap(x[members]), 5)]
        assert s.provenance.extras["indices"][c::2] == expected.tolist()


def test_herding_indices_all_points_and_bad_count():
    feats = torch.randn(7, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert sorted(herding_indices(feats, 7).tolist()) == list(range(7))
    with pytest.raises(ValueError, match="count"):
        herding_indices(feats, 8)


def test_herding_mean_closer_than_random():
    # Skewed classes: most points near the origin, a tail of far points.
    gen = torch.Generator().manual_seed(0)
    n, d, ipc = 400, 8, 5
    y = torch.arange(n) % 2
    scale = torch.where(torch.rand(n, generator=gen) < 0.15, 6.0, 1.0)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) * scale[:, None] + 3.0 * y[:, None]
    fmap = RandomFCNN(d, seed=0)

    def mean_gap(s: DistilledSet) -> float:
        gap = 0.0
        for c in range(2):
            gap += float(torch.linalg.norm(fmap(s.x[s.labels == c]).mean(0) - fmap(x[y == c]).mean(0)))
        return gap

    herd = mean_gap(herding(x, y, ipc=ipc, feature_map=fmap))
    randoms = [mean_gap(random_subset(x, y, ipc=ipc, feature_map=fmap, seed=s)) for s in range(20)]
    assert herd < min(randoms)


# -- KIP ---------------------------------------------------------------------
def test_kip_real_init_is_the_random_subset(small):
    x, y, fmap = small
    s = _kip(x, y, fmap, steps=0, seed=2)
    r = random_subset(x, y, ipc=IPC, feature_map=fmap, seed=2)
    assert torch.equal(s.x, r.x)
    assert s.provenance.extras["init_indices"] == r.provenance.extras["indices"]
    assert s.provenance.extras["step_seconds"] is None and s.provenance.extras["loss_history"] == []


@pytest.mark.parametrize("learn_labels", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kip_loss_decreases(small, learn_labels, dtype):
    x, y, fmap = small
    s = _kip(x, y, fmap, steps=40, learn_labels=learn_labels, dtype=dtype)  # full batch: a deterministic loss
    history = s.provenance.extras["loss_history"]
    assert [h[0] for h in history] == list(range(40))
    assert history[-1][1] < 0.95 * history[0][1]
    assert s.provenance.extras["final_loss"] < s.provenance.extras["initial_loss"] == history[0][1]
    assert not torch.equal(s.x, x[torch.tensor(s.provenance.extras["init_indices"])])
    if not learn_labels:
        assert torch.equal(s.y, torch.nn.functional.one_hot(s.labels, K).to(torch.float64))


def test_kip_reg_and_labels_reproduce_its_model(small):
    x, y, fmap = small
    s = _kip(x, y, fmap, steps=15)
    features = fmap(s.x)
    kernel = features @ features.T
    m = K * IPC
    assert s.reg == pytest.approx(KIP_REG_SCALE * float(torch.trace(kernel)) / m, rel=1e-12)
    # Closed-form labels on the (full) batch: T_S^T = T^T M^+, M = (K_S + reg I)^-1 Phi_S Phi^T.
    targets = torch.nn.functional.one_hot(y, K).to(torch.float64)
    m_mat = torch.linalg.solve(kernel + s.reg * torch.eye(m, dtype=torch.float64), features @ fmap(x).T)
    labels = (targets.T @ torch.linalg.pinv(m_mat)).T
    assert torch.allclose(s.y, labels, rtol=1e-7, atol=1e-9)
    # KRR on the set with its reg is KIP's model.
    scores = KRR(s.feature_map(), reg=s.reg).fit(s.x, s.y).decision_function(x)
    assert torch.allclose(scores, m_mat.T @ s.y, rtol=1e-7, atol=1e-9)
    assert float(((scores - targets) ** 2).mean()) == pytest.approx(s.provenance.extras["final_loss"], rel=1e-7)


def test_kip_minibatches_and_noise_init(small):
    x, y, fmap = small
    s = kip(x, y, ipc=2, feature_map=fmap, steps=6, batch_size=20, init="noise", progress=False, cache_features=False)
    _check_layout(s, K, 2, D)
    assert s.provenance.extras["init_indices"] is None and s.provenance.extras["dtype"] == "float32"
    assert s.provenance.extras["batch_size"] == 20 and s.provenance.extras["cache_features"] is False
    cached = kip(x, y, ipc=2, feature_map=fmap, steps=6, batch_size=20, init="noise", progress=False, cache_features=True)
    assert torch.allclose(s.x, cached.x, atol=1e-5)


@pytest.mark.parametrize("fmap", [RandomFCNN(D, seed=0), RandomFourier(D, seed=0), Identity()], ids=["fcnn", "rff", "identity"])
def test_feature_maps_are_differentiable(fmap):
    x = torch.randn(4, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fmap, (x,))


def test_kip_with_rff_map(small):
    x, y, _ = small
    fmap = RandomFourier(D, seed=1, sigma=3.0)
    s = _kip(x, y, fmap, steps=20)
    assert s.provenance.extras["final_loss"] < s.provenance.extras["initial_loss"]


# -- bad inputs ----------------------------------------------------------------
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("ipc, error", [(0, ValueError), (-1, ValueError), (2.5, TypeError), (True, TypeError)])
def test_bad_ipc(method, small, ipc, error):
    x, y, fmap = small
    with pytest.raises(error, match="ipc must be"):
        METHODS[method](x, y, fmap, ipc=ipc)


@pytest.mark.parametrize("method", list(METHODS))
def test_bad_data(method, small):
    x, y, fmap = small
    with pytest.raises(ValueError, match="1-D"):
        METHODS[method](x[:, 0], y, fmap)
    with pytest.raises(ValueError, match="different numbers of samples"):
        METHODS[method](x, y[:-1], fmap)
    bad = x.clone()
    bad[17, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        METHODS[method](bad, y, fmap)
    with pytest.raises(ValueError, match="expects inputs of shape"):
        METHODS[method](x[:, :5], y, fmap)
    with pytest.raises(TypeError):
        METHODS[method]([[0.0]], y, fmap)
    with pytest.raises(ValueError, match="has no sample of class"):
        METHODS[method](x, torch.where(y == 1, 2, y), fmap)


@pytest.mark.parametrize("method", list(METHODS))
def test_class_with_too_few_points(method, small):
    x, y, fmap = small
    keep = torch.cat([(y != 1).nonzero().flatten(), (y == 1).nonzero().flatten()[:2]])
    with pytest.raises(ValueError, match=r"class 1 has 2 point\(s\) but ipc=3"):
        METHODS[method](x[keep], y[keep], fmap)


@pytest.mark.parametrize("method", list(METHODS))
def test_bad_teacher(method, small):
    x, y, fmap = small
    with pytest.raises(ValueError, match="fitted KRR"):
        METHODS[method](x, y, fmap, teacher=KRR(fmap, reg=1.0))
    teacher = KRR(fmap, reg=1.0).fit(x, y)
    with pytest.raises(ValueError, match="differs from the teacher"):
        METHODS[method](x, y, RandomFCNN(D, seed=99), teacher=teacher)
    with pytest.raises(ValueError, match="features, the teacher"):
        METHODS[method](x[:, :6], y, None, teacher=teacher)


@pytest.mark.parametrize("method", ["random", "herding"])
def test_bad_reg_s(method, small):
    x, y, fmap = small
    for reg_s, error in ((-1.0, ValueError), (float("nan"), ValueError), ("auto", ValueError), (None, TypeError)):
        with pytest.raises(error, match="reg_s must be"):
            METHODS[method](x, y, fmap, reg_s=reg_s)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": -1}, "steps"),
        ({"steps": 2.0}, "steps must be an integer"),
        ({"lr": 0.0}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"dtype": torch.float16}, "dtype"),
        ({"init": "zeros"}, "init"),
        ({"reg_scale": -1.0}, "reg_scale"),
    ],
)
def test_kip_bad_options(small, kwargs, match):
    x, y, fmap = small
    with pytest.raises((TypeError, ValueError), match=match):
        _kip(x, y, fmap, **kwargs)


def test_bad_seed(small):
    x, y, fmap = small
    with pytest.raises(TypeError, match="seed"):
        random_subset(x, y, ipc=1, feature_map=fmap, seed=1.5)
    with pytest.raises(TypeError, match="feature_map"):
        herding(x, y, ipc=1, feature_map="fcnn")
