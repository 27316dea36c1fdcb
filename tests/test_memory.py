"""Tests for distillmem.MomentMemory: exact, mergeable moment memories (docs/math.md §11)."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

import distillmem.memory
from distillmem import KRR, DistilledSet, MomentMemory, distill
from distillmem.features import Identity, RandomFCNN, RandomFourier

P = 40  # input width of the test problems; every map below has p = 40
MAPS = {
    "identity": lambda: Identity(),
    "fcnn": lambda: RandomFCNN(P, seed=1),
    "rff": lambda: RandomFourier(P, sigma=4.0, seed=3),
}
REGS = [0.0, 1e-3, 1.0]


def one_hot(y: torch.Tensor, k: int = 4) -> torch.Tensor:
    return torch.nn.functional.one_hot(y, k).to(torch.float64)


def memory_of(fmap, x, y, **params) -> MomentMemory:
    return MomentMemory(fmap, 4, **params).update(x, y)


def moments(memory: MomentMemory) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, R) of a memory's points: invariant to rotations of the points."""
    return memory.features_.T @ memory.features_, memory.features_.T @ memory.targets_


def random_orthogonal(r: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(r, r, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


# -- exactness ------------------------------------------------------------------------


@pytest.mark.parametrize("map_name", list(MAPS))
@pytest.mark.parametrize("reg", REGS)
def test_memory_krr_equals_krr_on_the_data(make_problem, rel_err, map_name, reg):
    x, y = make_problem(n=300)
    memory = memory_of(MAPS[map_name](), x, y)
    expected = KRR(MAPS[map_name](), reg=reg, n_classes=4).fit(x, y).weights_
    assert memory.n_points == P
    assert rel_err(memory.fit_krr(reg).weights_, expected) < 1e-11


@pytest.mark.parametrize("reg", REGS)
def test_rank_deficient_data_gives_rank_points_and_exact_krr(make_problem, naive_ridge, rel_err, reg):
    # 25 samples of 20 distinct columns, duplicated to width 40: rank 20 < n < p.
    x, y = make_problem(n=25, d=20)
    x = torch.cat([x, x], dim=1)
    memory = memory_of(Identity(), x, y)
    assert memory.n_points == 20
    assert rel_err(memory.fit_krr(reg).weights_, naive_ridge(x, one_hot(y), reg)) < 1e-11


def test_memory_points_reproduce_the_moments(make_problem):
    x, y = make_problem(n=300)
    fmap = MAPS["fcnn"]()
    memory = memory_of(fmap, x, y)
    features = fmap(x)
    gram, cross = moments(memory)
    assert torch.allclose(gram, features.T @ features, rtol=0, atol=1e-10 * float(gram.abs().max()))
    assert torch.allclose(cross, features.T @ one_hot(y), rtol=0, atol=1e-10 * float(cross.abs().max()))


def test_memory_is_canonical_orthogonal_rows_descending(make_problem):
    x, y = make_problem(n=300)
    memory = memory_of(MAPS["fcnn"](), x, y)
    norms = memory.features_.norm(dim=1)
    gram_rows = memory.features_ @ memory.features_.T
    assert torch.all(norms[:-1] >= norms[1:])
    assert torch.allclose(gram_rows, torch.diag(norms**2), rtol=0, atol=1e-10 * float(norms[0] ** 2))


def test_fit_krr_predicts_like_krr_on_the_data(make_problem):
    x, y = make_problem(n=300)
    x_test, _ = make_problem(n=50, seed=1)
    head = memory_of(MAPS["rff"](), x, y).fit_krr(0.1)
    reference = KRR(MAPS["rff"](), reg=0.1, n_classes=4).fit(x, y)
    assert head.n_samples_ == 300 and head.reg_ == 0.1
    assert torch.allclose(head.decision_function(x_test), reference.decision_function(x_test), rtol=0, atol=1e-10)


# -- merging ------------------------------------------------------------------------


def class_shards(x, y, groups):
    return [(x[torch.isin(y, torch.tensor(g))], y[torch.isin(y, torch.tensor(g))]) for g in groups]


@pytest.mark.parametrize("reg", REGS)
def test_merged_shard_memories_equal_pooled_krr(make_problem, rel_err, reg):
    # Class-incremental shards; the last has 12 samples, fewer than p.
    x, y = make_problem(n=300)
    x_small, y_small = make_problem(n=12, seed=5)
    shards = class_shards(x, y, [[0, 1], [2], [3]]) + [(x_small, y_small)]
    fmap = MAPS["fcnn"]()
    merged = MomentMemory(fmap, 4)
    for xs, ys in shards:
        merged = merged.merge(memory_of(fmap, xs, ys))
    pooled_x, pooled_y = torch.cat([s[0] for s in shards]), torch.cat([s[1] for s in shards])
    expected = KRR(MAPS["fcnn"](), reg=reg, n_classes=4).fit(pooled_x, pooled_y).weights_
    assert merged.n_seen_ == pooled_x.shape[0]
    assert rel_err(merged.fit_krr(reg).weights_, expected) < 1e-11


def test_concatenated_points_of_shard_memories_give_pooled_krr(make_problem, naive_ridge, rel_err):
    x, y = make_problem(n=300)
    fmap = MAPS["fcnn"]()
    shards = [memory_of(fmap, xs, ys) for xs, ys in class_shards(x, y, [[0], [1, 2], [3]])]
    features = torch.cat([m.features_ for m in shards])
    targets = torch.cat([m.targets_ for m in shards])
    assert rel_err(naive_ridge(features, targets, 0.5), naive_ridge(fmap(x), one_hot(y), 0.5)) < 1e-10


def test_merge_is_order_free_and_associative(make_problem):
    x, y = make_problem(n=300)
    fmap = MAPS["identity"]()
    a, b, c = (memory_of(fmap, xs, ys) for xs, ys in class_shards(x, y, [[0], [1, 2], [3]]))
    variants = [a.merge(b).merge(c), c.merge(b).merge(a), a.merge(b.merge(c)), b.merge(a).merge(c)]
    gram, cross = moments(variants[0])
    for other in variants[1:]:
        other_gram, other_cross = moments(other)
        assert torch.allclose(other_gram, gram, rtol=0, atol=1e-11 * float(gram.abs().max()))
        assert torch.allclose(other_cross, cross, rtol=0, atol=1e-11 * float(cross.abs().max()))


def test_merge_leaves_its_inputs_unchanged(make_problem):
    x, y = make_problem(n=300)
    a = memory_of(Identity(), x[:150], y[:150])
    b = memory_of(Identity(), x[150:], y[150:])
    before = (a.features_.clone(), a.n_seen_, b.features_.clone(), b.n_seen_)
    a.merge(b)
    assert torch.equal(a.features_, before[0]) and a.n_seen_ == before[1]
    assert torch.equal(b.features_, before[2]) and b.n_seen_ == before[3]


# -- compression -------------------------------------------------------------------


@pytest.mark.parametrize("reg", [0.0, 1.0])
def test_truncation_error_equals_the_weight_difference(make_problem, rel_err, reg):
    x, y = make_problem(n=300)
    memory = memory_of(MAPS["fcnn"](), x, y, shrink="truncate")
    full = memory.fit_krr(reg).weights_
    for r in (1, 5, 20, 39, 40):
        actual = rel_err(memory.compress(r).fit_krr(reg).weights_, full)
        assert abs(memory.truncation_error(r, reg) - actual) < 1e-10


def test_truncation_error_is_non_increasing_in_r_and_zero_at_rank(make_problem):
    x, y = make_problem(n=300)
    memory = memory_of(MAPS["fcnn"](), x, y)
    errors = [memory.truncation_error(r, 1e-2) for r in range(1, P + 1)]
    assert all(later <= earlier for earlier, later in zip(errors, errors[1:]))
    assert errors[0] > 0.1 and errors[-1] == 0.0


def test_truncation_error_follows_the_theory_formula(make_problem, naive_ridge, rel_err):
    # ||W - W_r||^2 = sum_{i > r} ||u_i^T R||^2 / (e_i + reg)^2 with G = U diag(e) U^T (docs/math.md §11.2).
    x, y = make_problem(n=300)
    fmap = MAPS["identity"]()
    features, targets, reg, r = fmap(x), one_hot(y), 0.3, 10
    eig, vecs = torch.linalg.eigh(features.T @ features)
    eig, vecs = eig.flip(0), vecs.flip(1)
    coef = (vecs.T @ (features.T @ targets)).square().sum(dim=1) / (eig + reg) ** 2
    expected = float((coef[r:].sum() / coef.sum()).sqrt())
    assert abs(memory_of(fmap, x, y).truncation_error(r, reg) - expected) < 1e-10


@pytest.mark.parametrize("shrink", ["truncate", "frequent-directions"])
def test_compress_to_at_least_the_rank_is_exact(make_problem, rel_err, shrink):
    x, y = make_problem(n=30, d=20)
    memory = memory_of(Identity(), torch.cat([x, x], dim=1), y, shrink=shrink)  # rank 20
    for r in (20, 33, 40):
        compressed = memory.compress(r)
        assert compressed.n_points == 20
        for reg in REGS:
            assert rel_err(compressed.fit_krr(reg).weights_, memory.fit_krr(reg).weights_) < 1e-12


def test_frequent_directions_error_is_psd_and_bounded(make_problem):
    # FD on A = [Phi, c T] with c = ||Phi|| / ||T||: 0 <= A^T A - B^T B <= sigma_{r+1}(A)^2 I.
    x, y = make_problem(n=300)
    memory = memory_of(MAPS["fcnn"](), x, y, shrink="frequent-directions")
    c = float(memory.features_.norm() / memory.targets_.norm())
    augmented = torch.cat([memory.features_, c * memory.targets_], dim=1)
    r = 12
    compressed = memory.compress(r)
    sketch = torch.cat([compressed.features_, c * compressed.targets_], dim=1)
    gap = torch.linalg.eigvalsh(augmented.T @ augmented - sketch.T @ sketch)
    bound = float(torch.linalg.svdvals(augmented)[r] ** 2)
    assert compressed.n_points == r
    assert float(gap.min()) > -1e-10 * bound
    assert float(gap.max()) < bound * (1 + 1e-10)


@pytest.mark.parametrize("shrink", ["truncate", "frequent-directions"])
def test_budgeted_memory_never_exceeds_max_points(make_problem, shrink):
    x, y = make_problem(n=300)
    memory = MomentMemory(MAPS["fcnn"](), 4, max_points=7, shrink=shrink, chunk_size=16)
    for start, size in zip((0, 5, 70, 71, 200), (5, 65, 1, 129, 100)):
        memory.update(x[start : start + size], y[start : start + size])
        assert memory.n_points <= 7
    other = MomentMemory(MAPS["fcnn"](), 4).update(x, y)
    assert other.n_points == P and memory.merge(other).n_points <= 7
    assert memory.n_seen_ == 300


def test_budgeted_truncation_after_one_update_is_the_top_r_directions(make_problem, rel_err):
    x, y = make_problem(n=300)
    budgeted = memory_of(MAPS["fcnn"](), x, y, max_points=10, shrink="truncate")
    exact = memory_of(MAPS["fcnn"](), x, y, shrink="truncate")
    assert rel_err(budgeted.fit_krr(0.1).weights_, exact.compress(10).fit_krr(0.1).weights_) < 1e-10


# -- streaming -------------------------------------------------------------------


@pytest.mark.parametrize("source", ["tensor", "numpy", "memmap", "batches", "calls"])
def test_streamed_input_equals_in_memory_input(make_problem, rel_err, tmp_path, source):
    x, y = make_problem(n=300)
    fmap = MAPS["fcnn"]()
    expected = memory_of(fmap, x, y).fit_krr(1e-3).weights_
    memory = MomentMemory(fmap, 4, chunk_size=64)  # several QR folds
    if source == "tensor":
        memory.update(x, y)
    elif source == "numpy":
        memory.update(x.numpy(), y.numpy())
    elif source == "memmap":
        np.save(tmp_path / "x.npy", x.numpy())
        memory.update(np.load(tmp_path / "x.npy", mmap_mode="r"), y.numpy())
    elif source == "batches":
        edges = [0, 3, 100, 101, 230, 300]
        memory.update((x[a:b], one_hot(y[a:b])) for a, b in zip(edges, edges[1:]))
    else:
        for start in range(0, 300, 37):
            memory.update(x[start : start + 37], y[start : start + 37])
    assert memory.n_seen_ == 300
    assert rel_err(memory.fit_krr(1e-3).weights_, expected) < 1e-10


def test_failed_update_leaves_the_memory_unchanged(make_problem):
    x, y = make_problem(n=300)
    memory = memory_of(Identity(), x[:100], y[:100])
    before = memory.features_.clone()
    bad = x[100:200].clone()
    bad[50, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        memory.update(iter([(x[100:150], y[100:150]), (bad, y[100:200])]))
    assert torch.equal(memory.features_, before) and memory.n_seen_ == 100


# -- distilled sets ----------------------------------------------------------------


@pytest.mark.parametrize("map_name", list(MAPS))
@pytest.mark.parametrize("reg", [0.0, 0.5])
def test_to_distilled_set_refits_to_the_memory_model(make_problem, rel_err, map_name, reg):
    x, y = make_problem(n=300)
    memory = memory_of(MAPS[map_name](), x, y)
    distilled = memory.to_distilled_set(reg)
    refit = KRR(distilled.feature_map(), reg=distilled.reg, n_classes=4).fit(distilled.x, distilled.y)
    assert isinstance(distilled, DistilledSet) and len(distilled) == P
    assert rel_err(refit.weights_, memory.fit_krr(reg).weights_) < 1e-10
    assert distilled.recovery_error < 1e-10


def test_rff_distilled_set_gives_every_reg_after_rescaling(make_problem, rel_err):
    x, y = make_problem(n=300)
    memory = memory_of(MAPS["rff"](), x, y)
    distilled = memory.to_distilled_set(0.5)
    scale = distilled.provenance.range_scale
    assert scale > 1 and distilled.reg == pytest.approx(0.5 / scale**2, rel=1e-14)
    for reg in (0.0, 1e-2, 3.0):
        refit = KRR(distilled.feature_map(), reg=reg / scale**2, n_classes=4).fit(distilled.x, distilled.y)
        assert rel_err(refit.weights_, memory.fit_krr(reg).weights_) < 1e-10


@pytest.mark.parametrize("map_name", ["identity", "rff"])
def test_memory_to_set_to_memory_round_trip_keeps_every_reg(make_problem, rel_err, map_name):
    x, y = make_problem(n=300)
    memory = memory_of(MAPS[map_name](), x, y)
    back = MomentMemory.from_distilled_set(memory.to_distilled_set(0.5))
    for reg in REGS:
        assert rel_err(back.fit_krr(reg).weights_, memory.fit_krr(reg).weights_) < 1e-10


def test_procrustes_alignment_keeps_w_and_moves_points_to_the_reference(make_problem, rel_err):
    x, y = make_problem(n=300)
    memory = memory_of(Identity(), x, y)
    reference = x[:P]
    plain = memory.to_distilled_set(0.5)
    aligned = memory.to_distilled_set(0.5, align_to=reference)
    refit = KRR(Identity(), reg=aligned.reg, n_classes=4).fit(aligned.x, aligned.y)
    assert rel_err(refit.weights_, memory.fit_krr(0.5).weights_) < 1e-10
    distance = float(torch.linalg.norm(aligned.x - reference))
    assert distance < 0.8 * float(torch.linalg.norm(plain.x - reference))
    for seed in range(20):  # Procrustes is the best rotation
        assert distance <= float(torch.linalg.norm(random_orthogonal(P, seed) @ plain.x - reference))


def test_alignment_to_more_reference_points_spreads_the_memory(make_problem, rel_err):
    x, y = make_problem(n=300)
    memory = memory_of(MAPS["fcnn"](), x, y)
    spread = memory.to_distilled_set(0.2, align_to=x[:60])
    refit = KRR(spread.feature_map(), reg=spread.reg, n_classes=4).fit(spread.x, spread.y)
    assert len(spread) == 60
    assert rel_err(refit.weights_, memory.fit_krr(0.2).weights_) < 1e-10


@pytest.mark.parametrize("map_name", list(MAPS))
def test_redistilled_chen_set_keeps_its_model(make_problem, rel_err, map_name):
    x, y = make_problem(n=300)
    teacher = KRR(MAPS[map_name](), reg=0.1, n_classes=4).fit(x, y)
    chen = distill(x, y, ipc=2, teacher=teacher)  # 8 points, exact at reg = chen.reg
    memory = MomentMemory.from_distilled_set(chen)
    scale = chen.provenance.range_scale
    assert memory.n_points <= 8 and memory.n_seen_ == 8
    assert rel_err(memory.fit_krr(chen.reg * scale**2).weights_, teacher.weights_) < 1e-10


def test_from_features_rebuilds_a_sent_memory(make_problem, rel_err):
    x, y = make_problem(n=300)
    fmap = MAPS["fcnn"]()
    sent = memory_of(fmap, x, y)
    received = MomentMemory.from_features(fmap, 4, sent.features_.numpy(), sent.targets_.numpy(), n_seen=sent.n_seen_)
    assert received.n_seen_ == 300 and received.n_features_in_ == P
    assert rel_err(received.fit_krr(0.0).weights_, sent.fit_krr(0.0).weights_) < 1e-12


# -- bad input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "r, error, message",
    [
        (0, ValueError, r"r must be an integer in 1\.\.p=40"),
        (P + 1, ValueError, r"r must be an integer in 1\.\.p=40"),
        (2.5, TypeError, "r must be an integer, got 2.5"),
        (True, TypeError, "r must be an integer, got True"),
    ],
)
def test_compress_rejects_r_outside_1_to_p(make_problem, r, error, message):
    x, y = make_problem(n=300)
    memory = memory_of(Identity(), x, y)
    with pytest.raises(error, match=message):
        memory.compress(r)
    with pytest.raises(error, match=message):
        memory.truncation_error(r, 1.0)


@pytest.mark.parametrize(
    "max_points, message",
    [(0, "max_points must be >= 1, got 0"), (P + 1, r"max_points must be an integer in 1\.\.p=40")],
)
def test_update_rejects_max_points_outside_1_to_p(make_problem, max_points, message):
    x, y = make_problem(n=300)
    with pytest.raises(ValueError, match=message):
        MomentMemory(Identity(), 4, max_points=max_points).update(x, y)


def test_merge_rejects_different_feature_maps(make_problem):
    x, y = make_problem(n=300)
    a = memory_of(RandomFCNN(P, seed=0), x, y)
    b = memory_of(RandomFCNN(P, seed=1), x, y)
    with pytest.raises(ValueError, match="different feature maps"):
        a.merge(b)


def test_merge_rejects_different_n_classes(make_problem):
    x, y = make_problem(n=300)
    a = memory_of(Identity(), x, y)
    b = MomentMemory(Identity(), 5).update(x, y)
    with pytest.raises(ValueError, match="different n_classes: 4 != 5"):
        a.merge(b)


def test_update_rejects_a_different_input_width(make_problem):
    x, y = make_problem(n=300)
    memory = memory_of(Identity(), x, y)
    with pytest.raises(ValueError, match="x has 39 features, the memory holds inputs of width 40"):
        memory.update(x[:, :39], y)


def test_update_rejects_nan_naming_the_row(make_problem):
    x, y = make_problem(n=300)
    x[17, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf.*row 17"):
        MomentMemory(Identity(), 4).update(x, y)


def test_to_distilled_set_rejects_a_non_surjective_map(make_problem):
    x, y = make_problem(n=300)
    memory = memory_of(RandomFourier(P, out_features=60, sigma=4.0), x, y)
    with pytest.raises(ValueError, match="not surjective"):
        memory.to_distilled_set(1.0)


@pytest.mark.parametrize(
    "params, message",
    [({"shrink": "svd"}, "shrink must be one of"), ({"chunk_size": 0}, "chunk_size must be"), ({}, "")],
)
def test_bad_parameters_are_named(make_problem, params, message):
    x, y = make_problem(n=30)
    memory = MomentMemory(Identity(), 4, **params)
    if not params:
        with pytest.raises(TypeError, match="with y=None"):
            memory.update([(x, y)], y)
        with pytest.raises(RuntimeError, match="empty"):
            memory.fit_krr(1.0)
        return
    with pytest.raises(ValueError, match=message):
        memory.update(x, y)


def test_reg_must_be_finite_and_non_negative(make_problem):
    x, y = make_problem(n=30)
    memory = memory_of(Identity(), x, y)
    for reg, error, message in [
        (-1.0, ValueError, "reg must be >= 0"),
        (float("inf"), ValueError, "reg must be a finite number"),
        ("auto", TypeError, "reg must be a real number"),
    ]:
        with pytest.raises(error, match=message):
            memory.fit_krr(reg)


def test_docstring_example_runs():
    assert doctest.testmod(distillmem.memory).failed == 0
