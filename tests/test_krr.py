"""Tests for distillmem.KRR against naive float64 ridge references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distillmem import KRR
from distillmem.data import train_val_split
from distillmem.features import Identity, RandomFCNN, RandomFourier

MAPS = {
    "identity": lambda: Identity(),
    "fcnn": lambda: RandomFCNN(40, seed=1),
    "fcnn-narrowing": lambda: RandomFCNN(40, widths=(30, 20), seed=2),
    "rff": lambda: RandomFourier(40, sigma=4.0, seed=3),
}


def one_hot(y: torch.Tensor, k: int | None = None) -> torch.Tensor:
    return torch.nn.functional.one_hot(y, k if k is not None else int(y.max()) + 1).to(torch.float64)


def accuracy(scores: torch.Tensor, y: torch.Tensor) -> float:
    return float((scores.argmax(dim=1) == y).to(torch.float64).mean())


def noisy(make_problem, n: int, seed: int = 0):
    """A harder problem: class means buried in noise, so lambda matters."""
    x, y = make_problem(n=n, d=40, k=4, seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    return x + 4.0 * torch.randn(x.shape, generator=gen, dtype=torch.float64), y


# -- exact solutions ----------------------------------------------------------------


@pytest.mark.parametrize("map_name", list(MAPS))
@pytest.mark.parametrize("n, solver", [(300, "primal"), (300, "svd"), (15, "svd"), (15, "dual"), (300, "dual")])
@pytest.mark.parametrize("reg", [1e-3, 1.0])
def test_positive_reg_matches_naive_ridge(make_problem, naive_ridge, rel_err, map_name, n, solver, reg):
    x, y = make_problem(n=n)
    fmap = MAPS[map_name]()
    model = KRR(fmap, reg=reg, solver=solver).fit(x, y)
    expected = naive_ridge(fmap(x), one_hot(y), reg)
    assert model.solver_ == solver
    assert rel_err(model.weights_, expected) < 1e-10


@pytest.mark.parametrize("map_name", list(MAPS))
@pytest.mark.parametrize("n, solver", [(300, "primal"), (300, "svd"), (15, "svd")])
def test_zero_reg_is_minimum_norm_solution(make_problem, naive_ridge, rel_err, map_name, n, solver):
    x, y = make_problem(n=n)
    fmap = MAPS[map_name]()
    model = KRR(fmap, reg=0, solver=solver).fit(x, y)
    expected = naive_ridge(fmap(x), one_hot(y), 0.0)
    assert model.solver_ == solver
    assert rel_err(model.weights_, expected) < 1e-9


def test_zero_reg_rank_deficient_primal_is_minimum_norm(make_problem, naive_ridge, rel_err):
    # 300 samples, 40 columns but only 20 distinct: G is singular, W must be pinv(X) Y.
    x, y = make_problem(n=300, d=20)
    x = torch.cat([x, x], dim=1)
    model = KRR(Identity(), reg=0, solver="primal").fit(x, y)
    assert model.solver_ == "primal"
    assert rel_err(model.weights_, naive_ridge(x, one_hot(y), 0.0)) < 1e-9


def ill_conditioned(n: int, p: int = 40, decades: int = 5, seed: int = 0) -> torch.Tensor:
    """x (n, p) of full rank min(n, p), singular values 1 .. 10^-decades (condition number 10^decades)."""
    gen = torch.Generator().manual_seed(seed)
    r = min(n, p)
    u, _ = torch.linalg.qr(torch.randn(n, r, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(p, r, generator=gen, dtype=torch.float64))
    return (u * torch.logspace(0, -decades, r, dtype=torch.float64)) @ v.T


@pytest.mark.parametrize("n", [30, 40, 60], ids=["n<p", "n=p", "n>p"])
def test_zero_reg_is_accurate_on_ill_conditioned_full_rank_features(naive_ridge, rel_err, n):
    # Condition number 1e5, as on a square distilled set (m = p): the float64 minimum-norm
    # solution is determined to ~1e-11; solving through Phi^T Phi squares the condition number.
    x = ill_conditioned(n)
    y = torch.arange(n) % 4
    model = KRR(Identity(), reg=0).fit(x, y)
    assert rel_err(model.weights_, naive_ridge(x, one_hot(y), 0.0)) < 1e-9


@pytest.mark.parametrize("n, budget, expected", [(300, 2**24, "svd"), (300, 100, "primal"), (15, 100, "svd")])
def test_auto_solver_uses_the_svd_unless_n_ge_p_and_the_features_are_large(make_problem, monkeypatch, n, budget, expected):
    monkeypatch.setattr("distillmem.krr.SVD_MAX_ENTRIES", budget)
    x, y = make_problem(n=n)
    assert KRR(Identity(), reg=1.0).fit(x, y).solver_ == expected


@pytest.mark.parametrize("solver", ["svd", "dual"])
def test_array_solvers_reject_streamed_batches(make_problem, solver):
    x, y = make_problem(n=40)
    with pytest.raises(ValueError, match=f'solver="{solver}" needs the data as an array'):
        KRR(Identity(), reg=1.0, solver=solver, n_classes=4).fit([(x, y)])


@pytest.mark.parametrize("reg", [0, 0.0, "auto"])
def test_dual_solver_needs_a_fixed_positive_reg(make_problem, reg):
    x, y = make_problem(n=40)
    with pytest.raises(ValueError, match=r'solver="dual" needs a fixed reg > 0'):
        KRR(Identity(), reg=reg, solver="dual").fit(x, y)


def test_dual_solver_falls_back_to_the_svd_when_the_kernel_is_not_positive_definite(make_problem, naive_ridge, rel_err):
    # Huge features against reg = 1e-300: Phi Phi^T + reg I is singular in floating point (20 samples, rank 5).
    x, y = make_problem(n=20)
    x = x[:, :5] @ torch.randn(5, 40, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with pytest.warns(UserWarning, match="using the SVD"):
        model = KRR(Identity(), reg=1e-300, solver="dual").fit(x, y)
    assert rel_err(model.weights_, naive_ridge(x, one_hot(y), 0.0)) < 1e-8


def test_weights_have_documented_shape_dtype_and_device(problem):
    x, y = problem
    model = KRR(RandomFCNN(40, widths=(30, 20), seed=0), reg=0.1).fit(x, y)
    assert model.weights_.shape == (4, 20)
    assert model.weights_.dtype == torch.float64
    assert model.weights_.device.type == "cpu"
    assert (model.n_classes_, model.n_features_in_, model.n_samples_, model.reg_) == (4, 40, 300, 0.1)


@pytest.mark.parametrize("n", [300, 25])
def test_integer_labels_equal_one_hot_targets(make_problem, rel_err, n):
    x, y = make_problem(n=n)
    from_labels = KRR(RandomFCNN(40, seed=1), reg=0.01).fit(x, y)
    from_targets = KRR(RandomFCNN(40, seed=1), reg=0.01).fit(x, one_hot(y))
    assert rel_err(from_labels.weights_, from_targets.weights_) < 1e-14


@pytest.mark.parametrize("n", [300, 25])
def test_soft_targets_match_naive_ridge(make_problem, naive_ridge, rel_err, n):
    x, _ = make_problem(n=n)
    soft = torch.softmax(torch.randn(n, 5, generator=torch.Generator().manual_seed(9), dtype=torch.float64), dim=1)
    fmap = RandomFourier(40, sigma=4.0, seed=3)
    model = KRR(fmap, reg=0.01).fit(x, soft)
    assert model.n_classes_ == 5
    assert rel_err(model.weights_, naive_ridge(fmap(x), soft, 0.01)) < 1e-10


def test_n_classes_larger_than_present_gives_zero_rows(problem):
    x, y = problem
    model = KRR(Identity(), reg=0.1, n_classes=6).fit(x, y)
    assert model.weights_.shape == (6, 40)
    assert torch.equal(model.weights_[4:], torch.zeros(2, 40, dtype=torch.float64))


def test_image_shaped_inputs_are_flattened(problem, rel_err):
    x, y = problem
    flat = KRR(RandomFCNN(40, seed=1), reg=0.1).fit(x, y)
    images = KRR(RandomFCNN(40, seed=1), reg=0.1).fit(x.reshape(300, 2, 4, 5), y)
    assert images.n_features_in_ == 40
    assert rel_err(images.weights_, flat.weights_) < 1e-14


# -- input containers -------------------------------------------------------------


@pytest.mark.parametrize("n", [300, 25])
def test_numpy_arrays_equal_tensors(make_problem, rel_err, n):
    x, y = make_problem(n=n)
    reference = KRR(RandomFCNN(40, seed=1), reg=0.01).fit(x, y)
    model = KRR(RandomFCNN(40, seed=1), reg=0.01).fit(x.numpy(), y.numpy())
    assert rel_err(model.weights_, reference.weights_) < 1e-13


@pytest.mark.parametrize("n", [300, 25])
def test_memmap_equals_tensor(make_problem, rel_err, tmp_path, n):
    x, y = make_problem(n=n)
    path = tmp_path / "x.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=tuple(x.shape))
    out[:] = x.numpy()
    out.flush()
    del out
    mapped = np.load(path, mmap_mode="r")
    assert isinstance(mapped, np.memmap)
    reference = KRR(RandomFCNN(40, seed=1), reg=0.01, chunk_size=64).fit(x, y)
    model = KRR(RandomFCNN(40, seed=1), reg=0.01, chunk_size=64).fit(mapped, y.numpy())
    assert rel_err(model.weights_, reference.weights_) < 1e-13


def test_iterable_of_batches_equals_tensor(problem, rel_err):
    x, y = problem
    reference = KRR(RandomFCNN(40, seed=1), reg=0.01).fit(x, y)
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 300, 64)]
    model = KRR(RandomFCNN(40, seed=1), reg=0.01, n_classes=4).fit(iter(batches))
    assert model.n_samples_ == 300
    assert rel_err(model.weights_, reference.weights_) < 1e-12


def test_iterable_of_numpy_target_batches_needs_no_n_classes(problem, rel_err):
    x, y = problem
    reference = KRR(Identity(), reg=0.01).fit(x, y)
    targets = one_hot(y)
    batches = [(x[i : i + 50].numpy(), targets[i : i + 50].numpy()) for i in range(0, 300, 50)]
    model = KRR(Identity(), reg=0.01).fit(batches)
    assert model.n_classes_ == 4
    assert rel_err(model.weights_, reference.weights_) < 1e-12


def test_iterable_of_batches_with_eval_set_selects_like_tensor(problem, make_problem, rel_err):
    x, y = problem
    x_val, y_val = make_problem(n=60, seed=5)
    grid = (1e-2, 1.0, 100.0)
    reference = KRR(RandomFCNN(40, seed=1), reg="auto", reg_grid=grid).fit(x, y, eval_set=(x_val, y_val))
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 300, 64)]
    model = KRR(RandomFCNN(40, seed=1), reg="auto", reg_grid=grid, n_classes=4).fit(batches, eval_set=(x_val, y_val))
    assert model.reg_ == reference.reg_
    assert model.val_accuracy_ == reference.val_accuracy_
    assert rel_err(model.weights_, reference.weights_) < 1e-10


@pytest.mark.parametrize("chunk_size", [7, 299])
def test_chunk_size_does_not_change_weights(problem, rel_err, chunk_size):
    x, y = problem
    reference = KRR(RandomFourier(40, sigma=4.0, seed=3), reg=0.01).fit(x, y)
    model = KRR(RandomFourier(40, sigma=4.0, seed=3), reg=0.01, chunk_size=chunk_size).fit(x, y)
    assert rel_err(model.weights_, reference.weights_) < 1e-12


def test_chunk_size_does_not_change_predictions(problem, make_problem):
    x, y = problem
    x_test, _ = make_problem(n=50, seed=3)
    model = KRR(RandomFCNN(40, seed=1), reg=0.01).fit(x, y)
    scores = model.decision_function(x_test)
    model.chunk_size = 3
    torch.testing.assert_close(model.decision_function(x_test), scores, rtol=1e-13, atol=1e-14)


# -- reg="auto" -----------------------------------------------------------------------

GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def naive_val_accuracy(fmap, x_train, y_train, x_val, y_val, grid, naive_ridge):
    feats, val_feats = fmap(x_train), fmap(x_val)
    return {reg: accuracy(val_feats @ naive_ridge(feats, one_hot(y_train, 4), reg).T, y_val) for reg in grid}


@pytest.mark.parametrize("n", [300, 30])
def test_auto_with_eval_set_records_naive_validation_accuracy(make_problem, naive_ridge, n):
    x, y = noisy(make_problem, n)
    x_val, y_val = noisy(make_problem, 200, seed=1)
    fmap = RandomFCNN(40, seed=1)
    model = KRR(fmap, reg="auto", reg_grid=GRID).fit(x, y, eval_set=(x_val, y_val))
    assert model.val_accuracy_ == naive_val_accuracy(fmap, x, y, x_val, y_val, GRID, naive_ridge)


@pytest.mark.parametrize("n", [300, 30])
def test_auto_with_eval_set_picks_first_best_reg(make_problem, naive_ridge, n):
    x, y = noisy(make_problem, n)
    x_val, y_val = noisy(make_problem, 200, seed=1)
    fmap = RandomFCNN(40, seed=1)
    model = KRR(fmap, reg="auto", reg_grid=GRID).fit(x, y, eval_set=(x_val, y_val))
    naive = naive_val_accuracy(fmap, x, y, x_val, y_val, GRID, naive_ridge)
    best = max(naive.values())
    assert model.reg_ == min(reg for reg, acc in naive.items() if acc == best)


@pytest.mark.parametrize("n", [300, 30])
def test_auto_with_eval_set_fits_on_x_only(make_problem, naive_ridge, rel_err, n):
    x, y = noisy(make_problem, n)
    x_val, y_val = noisy(make_problem, 200, seed=1)
    fmap = RandomFCNN(40, seed=1)
    model = KRR(fmap, reg="auto", reg_grid=GRID).fit(x, y, eval_set=(x_val, y_val))
    assert model.n_samples_ == n
    assert rel_err(model.weights_, naive_ridge(fmap(x), one_hot(y), model.reg_)) < 1e-10
    fixed = KRR(RandomFCNN(40, seed=1), reg=model.reg_).fit(x, y)
    assert rel_err(model.weights_, fixed.weights_) < 1e-10


def test_auto_picks_first_maximum_in_ascending_order_on_ties(problem, make_problem):
    # Well-separated classes: every candidate reaches accuracy 1, so the smallest must win
    # even though the grid is given unsorted.
    x, y = problem
    x_val, y_val = make_problem(n=100, seed=1)
    model = KRR(Identity(), reg="auto", reg_grid=(100.0, 0.01, 1.0)).fit(x, y, eval_set=(x_val, y_val))
    assert model.val_accuracy_ == {0.01: 1.0, 1.0: 1.0, 100.0: 1.0}
    assert model.reg_ == 0.01


@pytest.mark.parametrize("n", [300, 30])
def test_auto_internal_split_selects_on_held_out_part(make_problem, naive_ridge, n):
    x, y = noisy(make_problem, n, seed=2)
    fmap = RandomFCNN(40, seed=1)
    model = KRR(fmap, reg="auto", reg_grid=GRID, val_fraction=0.2, seed=4, n_classes=4).fit(x, y)
    train_idx, val_idx = train_val_split(n, 0.2, 4)
    naive = naive_val_accuracy(fmap, x[train_idx], y[train_idx], x[val_idx], y[val_idx], GRID, naive_ridge)
    best = max(naive.values())
    assert model.val_accuracy_ == naive
    assert model.reg_ == min(reg for reg, acc in naive.items() if acc == best)


@pytest.mark.parametrize("n", [300, 30])
def test_auto_refit_uses_all_samples(make_problem, naive_ridge, rel_err, n):
    x, y = noisy(make_problem, n, seed=2)
    fmap = RandomFCNN(40, seed=1)
    model = KRR(fmap, reg="auto", reg_grid=GRID, val_fraction=0.2, seed=4, n_classes=4).fit(x, y)
    assert model.reg_ in GRID
    assert model.n_samples_ == n
    assert rel_err(model.weights_, naive_ridge(fmap(x), one_hot(y), model.reg_)) < 1e-10


@pytest.mark.parametrize("n", [300, 30])
def test_auto_without_refit_keeps_training_part_model(make_problem, naive_ridge, rel_err, n):
    x, y = noisy(make_problem, n, seed=2)
    fmap = RandomFCNN(40, seed=1)
    model = KRR(fmap, reg="auto", reg_grid=GRID, val_fraction=0.2, seed=4, refit=False, n_classes=4).fit(x, y)
    train_idx, _ = train_val_split(n, 0.2, 4)
    assert model.n_samples_ == len(train_idx) < n
    expected = naive_ridge(fmap(x[train_idx]), one_hot(y[train_idx], 4), model.reg_)
    assert rel_err(model.weights_, expected) < 1e-10


def test_auto_default_grid_is_used_when_none_given(problem):
    from distillmem.krr import LINEAR_REG_GRID, PAPER_REG_GRID

    x, y = problem
    linear = KRR(Identity(), reg="auto").fit(x, y)
    nonlinear = KRR(RandomFCNN(40, seed=0), reg="auto").fit(x, y)
    assert list(linear.val_accuracy_) == list(LINEAR_REG_GRID)
    assert list(nonlinear.val_accuracy_) == list(PAPER_REG_GRID)
    assert linear.reg_ in LINEAR_REG_GRID and nonlinear.reg_ in PAPER_REG_GRID


def test_fixed_reg_has_no_validation_record(problem):
    x, y = problem
    assert not hasattr(KRR(Identity(), reg=0.1).fit(x, y), "val_accuracy_")


# -- prediction ---------------------------------------------------------------------


@pytest.fixture
def fitted(problem):
    x, y = problem
    return KRR(RandomFCNN(40, widths=(30, 20), seed=0), reg=0.1).fit(x, y)


def test_decision_function_is_features_times_weights(fitted, make_problem):
    x_test, _ = make_problem(n=37, seed=8)
    scores = fitted.decision_function(x_test)
    assert scores.shape == (37, 4) and scores.dtype == torch.float64
    torch.testing.assert_close(scores, fitted.feature_map(x_test) @ fitted.weights_.T, rtol=1e-13, atol=1e-13)


def test_predict_is_argmax_of_scores(fitted, make_problem):
    x_test, _ = make_problem(n=37, seed=8)
    labels = fitted.predict(x_test)
    assert labels.shape == (37,) and labels.dtype == torch.int64
    assert torch.equal(labels, fitted.decision_function(x_test).argmax(dim=1))


def test_score_is_accuracy(fitted, make_problem):
    x_test, y_test = make_problem(n=37, seed=8)
    y_test = y_test.clone()
    y_test[:10] = (y_test[:10] + 1) % 4  # make some predictions wrong
    expected = float((fitted.predict(x_test) == y_test).to(torch.float64).mean())
    assert 0 < expected < 1
    assert fitted.score(x_test, y_test) == expected
    assert fitted.score(x_test.numpy(), one_hot(y_test, 4)) == expected


def test_prediction_rejects_wrong_width(fitted):
    with pytest.raises(ValueError, match="x has 30 features, the model was fitted on 40"):
        fitted.predict(torch.zeros(3, 30, dtype=torch.float64))


@pytest.mark.parametrize("method", ["predict", "decision_function", "score"])
def test_use_before_fit_raises(problem, method):
    x, y = problem
    args = (x, y) if method == "score" else (x,)
    with pytest.raises(RuntimeError, match="fit"):
        getattr(KRR(Identity(), reg=0.1), method)(*args)


@pytest.mark.parametrize("n", [300, 25])
def test_float32_inputs_give_close_but_not_identical_model(make_problem, rel_err, n):
    x, y = make_problem(n=n)
    model64 = KRR(RandomFCNN(40, seed=1), reg=0.1).fit(x, y)
    model32 = KRR(RandomFCNN(40, seed=1), reg=0.1).fit(x.to(torch.float32), y)
    assert model32.weights_.dtype == torch.float64
    assert not torch.equal(model32.weights_, model64.weights_)
    assert rel_err(model32.weights_, model64.weights_) < 1e-4


# -- bad input ------------------------------------------------------------------------


def test_mismatched_lengths_raise(problem):
    x, y = problem
    with pytest.raises(ValueError, match="different numbers of samples: 300 != 299"):
        KRR(Identity(), reg=0.1).fit(x, y[:-1])


@pytest.mark.parametrize("n, chunk_size", [(300, 8192), (300, 5), (25, 8192)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_x_raises_naming_the_row(make_problem, n, chunk_size, bad):
    x, y = make_problem(n=n)
    x = x.clone()
    x[17, 3] = bad
    with pytest.raises(ValueError, match=r"NaN or Inf \(first at row 17\)"):
        KRR(Identity(), reg=0.1, chunk_size=chunk_size).fit(x, y)


def test_non_finite_numpy_x_raises_naming_the_row(problem):
    x, y = problem
    x = x.numpy().copy()
    x[123, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN or Inf \(first at row 123\)"):
        KRR(Identity(), reg=0.1, chunk_size=50).fit(x, y.numpy())


def test_non_finite_eval_set_raises(problem, make_problem):
    x, y = problem
    x_val, y_val = make_problem(n=20, seed=1)
    x_val = x_val.clone()
    x_val[4, 0] = float("nan")
    with pytest.raises(ValueError, match=r"x_val contains NaN or Inf \(first at row 4\)"):
        KRR(Identity(), reg="auto").fit(x, y, eval_set=(x_val, y_val))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_targets_raise(problem, bad):
    x, y = problem
    targets = one_hot(y)
    targets[5, 1] = bad
    with pytest.raises(ValueError, match="y contains NaN or Inf"):
        KRR(Identity(), reg=0.1).fit(x, targets)


def test_labels_out_of_range_raise(problem):
    x, y = problem
    with pytest.raises(ValueError, match="class label 3, out of range for n_classes=3"):
        KRR(Identity(), reg=0.1, n_classes=3).fit(x, y)


def test_missing_class_without_n_classes_raises(problem):
    x, y = problem
    y = y.clone()
    y[y == 2] = 1
    with pytest.raises(ValueError, match=r"no sample of class\(es\) \[2\]"):
        KRR(Identity(), reg=0.1).fit(x, y)


def test_negative_labels_raise(problem):
    x, y = problem
    y = y.clone()
    y[0] = -1
    with pytest.raises(ValueError, match="negative class label -1"):
        KRR(Identity(), reg=0.1).fit(x, y)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bool])
def test_non_integer_one_dimensional_labels_raise(problem, dtype):
    x, y = problem
    with pytest.raises(ValueError, match="must hold integer class labels"):
        KRR(Identity(), reg=0.1).fit(x, (y % 2).to(dtype))


def test_target_columns_must_match_n_classes(problem):
    x, y = problem
    with pytest.raises(ValueError, match="4 target columns but n_classes=5"):
        KRR(Identity(), reg=0.1, n_classes=5).fit(x, one_hot(y))


@pytest.mark.parametrize("x", [torch.zeros(0, 40, dtype=torch.float64), np.zeros((0, 40))])
def test_empty_x_raises(x):
    with pytest.raises(ValueError, match="is empty"):
        KRR(Identity(), reg=0.1).fit(x, torch.zeros(0, dtype=torch.int64))


def test_one_dimensional_x_raises():
    with pytest.raises(ValueError, match="found 1-D shape"):
        KRR(Identity(), reg=0.1).fit(torch.ones(5, dtype=torch.float64), torch.zeros(5, dtype=torch.int64))


@pytest.mark.parametrize("reg", ["best", "AUTO"])
def test_bad_reg_string_raises(problem, reg):
    x, y = problem
    with pytest.raises(ValueError, match='reg must be a float >= 0 or "auto"'):
        KRR(Identity(), reg=reg).fit(x, y)


@pytest.mark.parametrize(
    "reg, error, message",
    [
        (-1e-3, ValueError, "reg must be >= 0"),
        (float("nan"), ValueError, "reg must be a finite number"),
        (float("inf"), ValueError, "reg must be a finite number"),
        (None, TypeError, "reg must be a real number"),
    ],
)
def test_bad_reg_raises(problem, reg, error, message):
    x, y = problem
    with pytest.raises(error, match=message):
        KRR(Identity(), reg=reg).fit(x, y)


@pytest.mark.parametrize("grid, message", [((), "reg_grid must be a non-empty sequence"), ((1.0, -1.0), r"reg_grid\[1\] must be >= 0")])
def test_bad_reg_grid_raises(problem, grid, message):
    x, y = problem
    with pytest.raises(ValueError, match=message):
        KRR(Identity(), reg="auto", reg_grid=grid).fit(x, y)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5])
def test_bad_val_fraction_raises(problem, fraction):
    x, y = problem
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\)"):
        KRR(Identity(), reg="auto", val_fraction=fraction).fit(x, y)


def test_bad_chunk_size_raises(problem):
    x, y = problem
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        KRR(Identity(), reg=0.1, chunk_size=0).fit(x, y)


def test_eval_set_with_wrong_width_raises(problem, make_problem):
    x, y = problem
    x_val, y_val = make_problem(n=20, d=30, seed=1)
    with pytest.raises(ValueError, match="eval_set has 30 features, x has 40"):
        KRR(Identity(), reg="auto").fit(x, y, eval_set=(x_val, y_val))


def test_eval_set_not_a_pair_raises(problem):
    x, y = problem
    with pytest.raises(ValueError, match=r"eval_set must be a pair \(x_val, y_val\)"):
        KRR(Identity(), reg="auto").fit(x, y, eval_set=(x,))


@pytest.mark.parametrize("n", [300, 25])
def test_feature_map_width_mismatch_raises(make_problem, n):
    x, y = make_problem(n=n, d=30)
    with pytest.raises(ValueError, match=r"expects inputs of shape \(n, 40\)"):
        KRR(RandomFCNN(40, seed=0), reg=0.1).fit(x, y)


def test_iterable_with_auto_and_no_eval_set_raises(problem):
    x, y = problem
    with pytest.raises(ValueError, match=r"needs eval_set"):
        KRR(Identity(), reg="auto", n_classes=4).fit([(x, y)])


def test_iterable_with_integer_labels_needs_n_classes(problem):
    x, y = problem
    with pytest.raises(ValueError, match="n_classes is required"):
        KRR(Identity(), reg=0.1).fit([(x[:100], y[:100]), (x[100:], y[100:])])


def test_iterable_with_y_raises(problem):
    x, y = problem
    with pytest.raises(TypeError, match="with y=None"):
        KRR(Identity(), reg=0.1, n_classes=4).fit([(x, y)], y)


def test_iterable_of_non_pairs_raises(problem):
    x, _ = problem
    with pytest.raises(ValueError, match=r"batch 0 must be an \(x, y\) pair"):
        KRR(Identity(), reg=0.1, n_classes=4).fit([x])


def test_iterable_batches_of_different_width_raise(problem):
    x, y = problem
    with pytest.raises(ValueError, match="batch 1 has 30 features, earlier batches had 40"):
        KRR(Identity(), reg=0.1, n_classes=4).fit([(x[:10], y[:10]), (x[10:20, :30], y[10:20])])


def test_empty_iterable_raises():
    with pytest.raises(ValueError, match="the data is empty"):
        KRR(Identity(), reg=0.1, n_classes=4).fit([])


def test_array_without_y_raises(problem):
    x, _ = problem
    with pytest.raises(ValueError, match="y is required"):
        KRR(Identity(), reg=0.1).fit(x)


def test_non_feature_map_raises_type_error(problem):
    x, y = problem
    with pytest.raises(TypeError, match="feature_map must be a distillmem FeatureMap"):
        KRR(torch.nn.Identity(), reg=0.1).fit(x, y)


def test_list_targets_raise_type_error(problem):
    x, y = problem
    with pytest.raises(TypeError, match="y must be a torch.Tensor or numpy array"):
        KRR(Identity(), reg=0.1).fit(x, y.tolist())


def test_from_weights_predicts_like_the_fitted_model(problem):
    x, y = problem
    fitted = KRR(RandomFCNN(40, seed=0), reg=0.1).fit(x, y)
    rebuilt = KRR.from_weights(fitted.feature_map_, fitted.weights_, 0.1, n_features_in=40, n_samples=300)
    assert torch.equal(rebuilt.predict(x), fitted.predict(x))
    assert (rebuilt.reg_, rebuilt.n_classes_, rebuilt.solver_) == (0.1, 4, "given")


def test_from_weights_rejects_weights_of_the_wrong_width():
    with pytest.raises(ValueError, match=r"weights must have shape \(k, 40\)"):
        KRR.from_weights(RandomFCNN(40, seed=0), torch.zeros(4, 39, dtype=torch.float64), 0.1, n_features_in=40, n_samples=1)


# -- reg="auto" on both solvers (the held-out rows must rejoin the refit) ------------------------------------


@pytest.mark.parametrize("solver, chunk_size", [("primal", 8192), ("primal", 7), ("svd", 8192)])
@pytest.mark.parametrize("refit", [True, False])
def test_auto_refit_on_each_solver_matches_a_fixed_reg_fit(make_problem, naive_ridge, rel_err, solver, chunk_size, refit):
    x, y = noisy(make_problem, 300, seed=2)
    fmap = RandomFCNN(40, seed=1)
    model = KRR(
        fmap, reg="auto", reg_grid=GRID, val_fraction=0.2, seed=4, refit=refit, solver=solver, chunk_size=chunk_size
    ).fit(x, y)
    train_idx, val_idx = train_val_split(300, 0.2, 4)
    assert model.solver_ == solver
    assert model.val_accuracy_ == naive_val_accuracy(fmap, x[train_idx], y[train_idx], x[val_idx], y[val_idx], GRID, naive_ridge)
    rows = torch.arange(300) if refit else train_idx
    assert model.n_samples_ == len(rows)
    assert rel_err(model.weights_, naive_ridge(fmap(x[rows]), one_hot(y[rows], 4), model.reg_)) < 1e-10
    # The held-out 20% moves the solution far more than the tolerance: dropping it cannot pass.
    other = torch.as_tensor(train_idx if refit else range(300))
    assert rel_err(naive_ridge(fmap(x[other]), one_hot(y[other], 4), model.reg_), model.weights_) > 1e-3
