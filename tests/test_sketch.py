"""GramSketch: the frequent-directions guarantee, merging, exactness and the KRR head."""

import pytest
import torch

from distillmem import KRR
from distillmem.features import Identity, RandomFCNN
from distillmem.sketch import GramSketch


def _data(n=400, d=30, k=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # A decaying spectrum, so a small sketch has something to keep and something to drop.
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) * torch.logspace(0, -2, d, dtype=torch.float64)
    y = torch.randint(0, k, (n,), generator=gen)
    return x, y


def _loewner_bounds(gap: torch.Tensor) -> tuple[float, float]:
    eig = torch.linalg.eigvalsh((gap + gap.T) / 2)
    return float(eig.min()), float(eig.max())


@pytest.mark.parametrize("chunk_size", [37, 8192])
def test_frequent_directions_guarantee(chunk_size):
    x, y = _data()
    sk = GramSketch(Identity(), n_classes=4, rank=6, chunk_size=chunk_size).update(x, y)
    assert sk.sketch_.shape[0] <= 6
    gap = x.T @ x - sk.sketch_.T @ sk.sketch_
    low, high = _loewner_bounds(gap)
    assert low >= -1e-9 * float(torch.linalg.norm(x) ** 2)
    assert high <= sk.shrinkage_ * (1 + 1e-9)
    assert sk.shrinkage_ > 0
    # R is kept exactly whatever the rank.
    t = torch.nn.functional.one_hot(y, 4).to(torch.float64)
    assert torch.allclose(sk.cross_, x.T @ t, rtol=0, atol=1e-12)
    assert sk.n_seen_ == 400 and sk.n_features_in_ == 30


def test_merge_is_a_sketch_of_the_union():
    x, y = _data()
    a = GramSketch(Identity(), n_classes=4, rank=8).update(x[:150], y[:150])
    b = GramSketch(Identity(), n_classes=4, rank=8).update(x[150:], y[150:])
    merged = a.merge(b)
    whole = GramSketch(Identity(), n_classes=4, rank=8).update(x, y)
    gap = x.T @ x - merged.sketch_.T @ merged.sketch_
    low, high = _loewner_bounds(gap)
    assert low >= -1e-9 and high <= merged.shrinkage_ * (1 + 1e-9)
    assert merged.shrinkage_ >= a.shrinkage_ + b.shrinkage_
    assert torch.allclose(merged.cross_, whole.cross_, atol=1e-12)
    assert merged.n_seen_ == 400
    # Both estimates lie within their bounds of the same G, hence within the sum of both of each other.
    diff = merged.gram() - whole.gram()
    assert float(torch.linalg.matrix_norm(diff, ord=2)) <= merged.shrinkage_ + whole.shrinkage_
    # Inputs are untouched.
    assert a.sketch_.shape[0] <= 8 and a.n_seen_ == 150


def test_exact_when_rank_covers_the_data():
    x, y = _data(n=80, d=12)
    for rank in (None, 12, 40):
        sk = GramSketch(Identity(), n_classes=4, rank=rank, chunk_size=25).update(x, y)
        assert sk.shrinkage_ == 0.0
        assert torch.allclose(sk.gram(), x.T @ x, rtol=0, atol=1e-10)


@pytest.mark.parametrize("reg", [0.0, 1e-3, 1.0])
def test_uncompressed_head_equals_krr(reg):
    x, y = _data(n=200, d=16)
    fmap = RandomFCNN(16, seed=1)
    head = GramSketch(fmap, n_classes=4).update(x, y).fit_krr(reg)
    ref = KRR(fmap, reg=reg, solver="primal").fit(x, y)
    err = float(torch.linalg.norm(head.weights_ - ref.weights_) / torch.linalg.norm(ref.weights_))
    assert err < 1e-8
    assert head.reg_ == reg and head.n_samples_ == 200
    assert torch.equal(head.predict(x), ref.predict(x))


def test_shrinkage_correction_is_half_delta():
    x, y = _data()
    sk = GramSketch(Identity(), n_classes=4, rank=5).update(x, y)
    g = sk.sketch_.T @ sk.sketch_
    expected = torch.linalg.solve(g + (sk.shrinkage_ / 2 + 0.1) * torch.eye(30, dtype=torch.float64), sk.cross_).T
    assert torch.allclose(sk.fit_krr(0.1).weights_, expected, atol=1e-10)


def test_from_arrays_round_trip_and_errors():
    x, y = _data()
    sk = GramSketch(Identity(), n_classes=4, rank=7).update(x, y)
    arrays = (sk.sketch_.numpy(), sk.cross_.numpy(), sk.shrinkage_, sk.diagonal_.numpy())
    back = GramSketch.from_arrays(Identity(), *arrays, n_seen=sk.n_seen_, n_features_in=30)
    for correction in ("shrinkage", "diagonal"):
        assert torch.allclose(back.gram(correction), sk.gram(correction), atol=1e-10)
        assert torch.allclose(back.fit_krr(0.5, correction).weights_, sk.fit_krr(0.5, correction).weights_, atol=1e-10)
    assert back.nbytes == (7 * 30 + 30 * 4 + 30 + 1) * 8
    with pytest.raises(ValueError, match="sketch must have shape"):
        GramSketch.from_arrays(Identity(), torch.zeros(3, 29), *arrays[1:], n_seen=1, n_features_in=30)
    with pytest.raises(ValueError, match="finite"):
        bad = sk.cross_.clone()
        bad[0, 0] = float("nan")
        GramSketch.from_arrays(Identity(), arrays[0], bad, *arrays[2:], n_seen=1, n_features_in=30)
    with pytest.raises(ValueError, match="shrinkage"):
        GramSketch.from_arrays(Identity(), *arrays[:2], -1.0, arrays[3], n_seen=1, n_features_in=30)
    with pytest.raises(ValueError, match="diagonal is below"):
        GramSketch.from_arrays(Identity(), *arrays[:3], 0.5 * arrays[3], n_seen=1, n_features_in=30)
    with pytest.raises(ValueError, match="correction"):
        sk.gram("trace")


def test_diagonal_is_exact_and_the_diagonal_correction_restores_it():
    x, y = _data()
    a = GramSketch(Identity(), n_classes=4, rank=5, chunk_size=50).update(x[:200], y[:200])
    b = GramSketch(Identity(), n_classes=4, rank=5).update(x[200:], y[200:])
    for sk, rows in ((a, x[:200]), (a.merge(b), x)):
        g = rows.T @ rows
        assert torch.allclose(sk.diagonal_, torch.diagonal(g), rtol=1e-12)
        assert torch.allclose(torch.diagonal(sk.gram("diagonal")), torch.diagonal(g), rtol=1e-12)
        off = ~torch.eye(30, dtype=torch.bool)
        assert torch.equal(sk.gram("diagonal")[off], (sk.sketch_.T @ sk.sketch_)[off])


def test_bad_parameters_and_state():
    x, y = _data(n=20, d=5)
    with pytest.raises(ValueError, match="rank"):
        GramSketch(Identity(), n_classes=4, rank=0).update(x, y)
    with pytest.raises(TypeError, match="rank"):
        GramSketch(Identity(), n_classes=4, rank=2.5).update(x, y)
    with pytest.raises(RuntimeError, match="empty"):
        GramSketch(Identity(), n_classes=4).fit_krr(1.0)
    sk = GramSketch(Identity(), n_classes=4).update(x, y)
    with pytest.raises(ValueError, match="width"):
        sk.update(torch.randn(3, 6, dtype=torch.float64), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="reg"):
        sk.fit_krr(-1.0)
    other = GramSketch(RandomFCNN(5, seed=3), n_classes=4).update(x, y)
    with pytest.raises(ValueError, match="different feature maps"):
        sk.merge(other)
    with pytest.raises(ValueError, match="NaN or Inf"):
        GramSketch(Identity(), n_classes=4).update(torch.full((2, 5), float("inf"), dtype=torch.float64), torch.tensor([0, 1]))
