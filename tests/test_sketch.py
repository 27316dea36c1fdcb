"""GramSketch: eigen-truncation and its bound, the local-head correction, merging, exactness and the KRR head."""

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


def _ridge(g: torch.Tensor, rhs: torch.Tensor, reg: float) -> torch.Tensor:
    return torch.linalg.solve(g + reg * torch.eye(g.shape[0], dtype=torch.float64), rhs)


def _off_diagonal(a: torch.Tensor) -> torch.Tensor:
    return a - torch.diag(torch.diagonal(a))


@pytest.mark.parametrize("chunk_size", [37, 8192])
def test_one_update_keeps_the_top_eigenpairs_within_the_bound(chunk_size):
    x, y = _data()
    sk = GramSketch(Identity(), n_classes=4, rank=6, chunk_size=chunk_size).update(x, y)
    g = x.T @ x
    eig, vec = torch.linalg.eigh(g)
    best = (vec[:, -6:] * eig[-6:]) @ vec[:, -6:].T  # the best rank-6 approximation, whatever the chunking
    assert sk.sketch_.shape == (6, 30)
    assert torch.allclose(sk.sketch_.T @ sk.sketch_, best, rtol=0, atol=1e-10 * float(eig[-1]))
    assert sk.shrinkage_ == pytest.approx(float(eig[-7]), rel=1e-10)
    low, high = _loewner_bounds(g - sk.sketch_.T @ sk.sketch_)
    assert low >= -1e-9 * float(eig[-1]) and high <= sk.shrinkage_ * (1 + 1e-9)
    # R and diag(G) are kept exactly whatever the rank.
    t = torch.nn.functional.one_hot(y, 4).to(torch.float64)
    assert torch.allclose(sk.cross_, x.T @ t, rtol=0, atol=1e-12)
    assert torch.allclose(sk.diagonal_, torch.diagonal(g), rtol=1e-12)
    assert sk.n_seen_ == 400 and sk.n_features_in_ == 30 and sk.correction_ is None


def test_correction_of_one_update_is_the_dropped_part_times_the_local_head():
    x, y = _data()
    t = torch.nn.functional.one_hot(y, 4).to(torch.float64)
    sk = GramSketch(Identity(), n_classes=4, rank=5, reg=0.1, chunk_size=64).update(x, y)
    g, r = x.T @ x, x.T @ t
    local = _ridge(g, r, 0.1)
    assert torch.allclose(sk.correction_, (g - sk.gram()) @ local, rtol=0, atol=1e-9 * float(torch.linalg.norm(r)))
    # The corrected head is much closer to exact KRR than the same sketch without the correction.
    exact = _ridge(g, r, 0.1).T
    corrected = sk.fit_krr(0.1).weights_
    plain = _ridge(sk.gram(), r, 0.1).T
    assert _rel(corrected, exact) < 0.5 * _rel(plain, exact)
    assert torch.allclose(corrected, _ridge(sk.gram(), r - sk.correction_, 0.1).T, atol=1e-10)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


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
    assert torch.allclose(merged.diagonal_, whole.diagonal_, rtol=1e-12)
    assert merged.n_seen_ == 400
    # Both estimates lie within their bounds of the same G, hence within the sum of both of each other.
    diff = merged.gram() - whole.gram()
    assert float(torch.linalg.matrix_norm(diff, ord=2)) <= 2 * (merged.shrinkage_ + whole.shrinkage_)
    # Inputs are untouched.
    assert a.sketch_.shape[0] <= 8 and a.n_seen_ == 150


def test_merge_adds_corrections_and_corrects_its_own_truncation():
    x, y = _data()
    t = torch.nn.functional.one_hot(y, 4).to(torch.float64)
    a = GramSketch(Identity(), n_classes=4, rank=6, reg=0.5).update(x[:150], y[:150])
    b = GramSketch(Identity(), n_classes=4, rank=6, reg=0.5).update(x[150:], y[150:])
    merged = a.merge(b)
    # Before the merge's truncation: both sketches' rows, the exact diagonals and the sum of the corrections.
    stacked = a.sketch_.T @ a.sketch_ + b.sketch_.T @ b.sketch_
    estimate = stacked + torch.diag(merged.diagonal_ - torch.diagonal(stacked))
    head = _ridge(estimate, merged.cross_ - a.correction_ - b.correction_, 0.5)
    dropped = stacked - merged.sketch_.T @ merged.sketch_
    expected = a.correction_ + b.correction_ + _off_diagonal(dropped) @ head
    assert torch.allclose(merged.correction_, expected, rtol=0, atol=1e-9 * float(torch.linalg.norm(expected)))
    exact = _ridge(x.T @ x, x.T @ t, 0.5).T
    plain = _ridge(merged.gram(), merged.cross_, 0.5).T
    assert _rel(merged.fit_krr(0.5).weights_, exact) < _rel(plain, exact)
    with pytest.raises(ValueError, match="different reg"):
        a.merge(GramSketch(Identity(), n_classes=4, rank=6).update(x[150:], y[150:]))


def test_exact_when_rank_covers_the_data():
    x, y = _data(n=80, d=12)
    t = torch.nn.functional.one_hot(y, 4).to(torch.float64)
    for rank in (None, 12, 40):
        sk = GramSketch(Identity(), n_classes=4, rank=rank, reg=1.0, chunk_size=25).update(x, y)
        assert sk.shrinkage_ == 0.0 and not sk.correction_.any()
        assert torch.allclose(sk.gram(), x.T @ x, rtol=0, atol=1e-10)
        assert _rel(sk.fit_krr(1.0).weights_, _ridge(x.T @ x, x.T @ t, 1.0).T) < 1e-10
    # More samples than features with rank >= p: the corrected sketch is still exact after a merge.
    a = GramSketch(Identity(), n_classes=4, rank=12, reg=1.0).update(x[:50], y[:50])
    b = GramSketch(Identity(), n_classes=4, rank=12, reg=1.0).update(x[50:], y[50:])
    assert _rel(a.merge(b).fit_krr(1.0).weights_, _ridge(x.T @ x, x.T @ t, 1.0).T) < 1e-10


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


def test_from_arrays_round_trip_and_errors():
    x, y = _data()
    sk = GramSketch(Identity(), n_classes=4, rank=7, reg=0.5).update(x, y)
    arrays = (sk.sketch_.numpy(), sk.cross_.numpy(), sk.shrinkage_, sk.diagonal_.numpy())
    back = GramSketch.from_arrays(Identity(), *arrays, n_seen=sk.n_seen_, n_features_in=30, correction=sk.correction_, reg=0.5)
    for estimate in ("diagonal", "shrinkage"):
        assert torch.allclose(back.gram(estimate), sk.gram(estimate), atol=1e-10)
    assert torch.allclose(back.correction_, sk.correction_, atol=0)
    assert torch.allclose(back.fit_krr(0.5).weights_, sk.fit_krr(0.5).weights_, atol=1e-10)
    assert back.shrinkage_ == sk.shrinkage_ and back.nbytes == sk.nbytes == (7 * 30 + 2 * 30 * 4 + 30 + 1) * 8
    plain = GramSketch.from_arrays(Identity(), *arrays, n_seen=sk.n_seen_, n_features_in=30)
    assert plain.correction_ is None and plain.nbytes == (7 * 30 + 30 * 4 + 30 + 1) * 8
    # A smaller rank truncates the rows once more; the bound grows by the largest eigenvalue dropped.
    fewer = GramSketch.from_arrays(Identity(), *arrays, n_seen=sk.n_seen_, n_features_in=30, rank=3)
    assert fewer.sketch_.shape == (3, 30) and fewer.shrinkage_ == pytest.approx(sk.shrinkage_ + float(sk.sketch_[3].square().sum()))
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
    with pytest.raises(ValueError, match="correction must have the shape"):
        GramSketch.from_arrays(Identity(), *arrays, n_seen=1, n_features_in=30, correction=sk.correction_[:, :3], reg=0.5)
    with pytest.raises(ValueError, match="correction must be finite|finite"):
        GramSketch.from_arrays(Identity(), *arrays, n_seen=1, n_features_in=30, correction=sk.correction_ * float("inf"), reg=0.5)
    with pytest.raises(ValueError, match="needs the reg"):
        GramSketch.from_arrays(Identity(), *arrays, n_seen=1, n_features_in=30, correction=sk.correction_)


def test_without_a_correction_the_head_uses_the_shrinkage_estimate():
    x, y = _data()
    sk = GramSketch(Identity(), n_classes=4, rank=5).update(x, y)
    g = sk.sketch_.T @ sk.sketch_
    assert sk.head_estimate == "shrinkage" and sk.shrinkage_ > 0
    assert torch.allclose(sk.gram("shrinkage"), g + sk.shrinkage_ / 2 * torch.eye(30, dtype=torch.float64), atol=0)
    assert torch.allclose(sk.fit_krr(0.1).weights_, _ridge(g, sk.cross_, sk.shrinkage_ / 2 + 0.1).T, atol=1e-10)
    corrected = GramSketch(Identity(), n_classes=4, rank=5, reg=0.1).update(x, y)
    assert corrected.head_estimate == "diagonal"
    assert torch.allclose(corrected.fit_krr(0.1).weights_, _ridge(corrected.gram("diagonal"), sk.cross_ - corrected.correction_, 0.1).T,
                          atol=1e-10)
    with pytest.raises(ValueError, match="estimate must be one of"):
        sk.gram("trace")


def test_the_estimate_restores_the_exact_diagonal():
    x, y = _data()
    a = GramSketch(Identity(), n_classes=4, rank=5, chunk_size=50).update(x[:200], y[:200])
    b = GramSketch(Identity(), n_classes=4, rank=5).update(x[200:], y[200:])
    for sk, rows in ((a, x[:200]), (a.merge(b), x)):
        g = rows.T @ rows
        assert torch.allclose(sk.diagonal_, torch.diagonal(g), rtol=1e-12)
        assert torch.allclose(torch.diagonal(sk.gram()), torch.diagonal(g), rtol=1e-12)
        off = ~torch.eye(30, dtype=torch.bool)
        assert torch.equal(sk.gram()[off], (sk.sketch_.T @ sk.sketch_)[off])


def test_bad_parameters_and_state():
    x, y = _data(n=20, d=5)
    with pytest.raises(ValueError, match="rank"):
        GramSketch(Identity(), n_classes=4, rank=0).update(x, y)
    with pytest.raises(TypeError, match="rank"):
        GramSketch(Identity(), n_classes=4, rank=2.5).update(x, y)
    with pytest.raises(ValueError, match="reg"):
        GramSketch(Identity(), n_classes=4, rank=2, reg=-1.0).update(x, y)
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


def test_folded_sketch_keeps_r_minus_c_alone_and_gives_the_same_heads():
    """fold=True: the same target and heads as R and C kept apart, through updates, merges and from_arrays, in k rows."""
    x, y = _data()
    apart = GramSketch(Identity(), n_classes=4, rank=6, reg=0.5).update(x[:150], y[:150]).update(x[150:250], y[150:250])
    folded = GramSketch(Identity(), n_classes=4, rank=6, reg=0.5, fold=True).update(x[:150], y[:150]).update(x[150:250], y[150:250])
    assert folded.cross_ is None and folded.correction_ is None
    torch.testing.assert_close(folded.target_, apart.cross_ - apart.correction_, rtol=0, atol=1e-10)
    rest = GramSketch(Identity(), n_classes=4, rank=6, reg=0.5).update(x[250:], y[250:])
    for merged, reference in ((folded.merge(rest), apart.merge(rest)), (folded.merge(rest.merge(rest)), apart.merge(rest.merge(rest)))):
        torch.testing.assert_close(merged.target_, reference.cross_ - reference.correction_, rtol=0, atol=1e-9)
        torch.testing.assert_close(merged.fit_krr(0.5).weights_, reference.fit_krr(0.5).weights_, rtol=0, atol=1e-10)
    assert folded.nbytes == apart.nbytes - 30 * 4 * 8  # R and C, 2k rows of p, became k rows
    back = GramSketch.from_arrays(Identity(), folded.sketch_, folded.target_, folded.shrinkage_, folded.diagonal_,
                                  n_seen=folded.n_seen_, n_features_in=30, reg=0.5, fold=True)
    torch.testing.assert_close(back.fit_krr(0.5).weights_, folded.fit_krr(0.5).weights_, rtol=0, atol=1e-12)
    also = GramSketch.from_arrays(Identity(), apart.sketch_, apart.cross_, apart.shrinkage_, apart.diagonal_,
                                  n_seen=apart.n_seen_, n_features_in=30, correction=apart.correction_, reg=0.5, fold=True)
    torch.testing.assert_close(also.target_, folded.target_, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="folded sketch"):
        apart.merge(folded)
    with pytest.raises(ValueError, match="needs a correction"):
        GramSketch(Identity(), n_classes=4, rank=6, fold=True).update(x, y)


@pytest.mark.parametrize("fold", [False, True])
def test_an_update_of_a_shallow_copy_leaves_the_original_as_it_was(fold):
    """update rebinds the state and never writes into its tensors: KRRStrategy relies on it to keep a failed
    experience from touching its memory."""
    import copy

    x, y = _data()
    original = GramSketch(Identity(), n_classes=4, rank=6, reg=0.5, fold=fold).update(x[:200], y[:200])
    state = {name: (value.clone() if isinstance(value, torch.Tensor) else value) for name, value in vars(original).items()}
    updated = copy.copy(original).update(x[200:], y[200:])
    assert updated.n_seen_ == 400
    for name, before in state.items():
        now = getattr(original, name)
        if isinstance(before, torch.Tensor):
            assert torch.equal(now, before), name
        else:
            assert now == before, name
