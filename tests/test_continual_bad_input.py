"""continual/: each bad input gets a clear error and leaves the memory of earlier experiences as it was."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("avalanche")

from avalanche.benchmarks import nc_benchmark  # noqa: E402
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as tensor_dataset  # noqa: E402

import distillmem as dm  # noqa: E402
from continual import DistilledBuffer, KRRStrategy, split_benchmark  # noqa: E402
from continual.data import ExperienceData, read_experience  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:No loggers specified:UserWarning")


@pytest.fixture(scope="module")
def bench():
    return split_benchmark("digits", n_experiences=5, seed=0)


def dataset_of(x: torch.Tensor, y: torch.Tensor, task: int = 0):
    return tensor_dataset(x, y, task_labels=task)


def experience_data(exp) -> tuple[torch.Tensor, torch.Tensor]:
    data = read_experience(exp.dataset)
    return data.x, data.y


def buffer_state(buffer: DistilledBuffer):
    return (
        [(g.classes, g.task_label, g.distilled.x.clone(), g.distilled.y.clone()) for g in buffer.groups],
        buffer.n_points,
        buffer.nbytes,
        len(buffer.buffer),
        buffer.max_size,
    )


def assert_same_buffer(before, buffer: DistilledBuffer) -> None:
    after = buffer_state(buffer)
    assert after[1:] == before[1:]
    assert len(after[0]) == len(before[0])
    for (c0, t0, x0, y0), (c1, t1, x1, y1) in zip(before[0], after[0]):
        assert (c0, t0) == (c1, t1) and torch.equal(x0, x1) and torch.equal(y0, y1)


@pytest.fixture
def buffer(bench):
    """A buffer of 6 points that has absorbed the first experience."""
    buf = DistilledBuffer(max_size=6, reg=1.0)
    buf.post_adapt(None, bench.train_stream[0])
    return buf


@pytest.fixture(scope="module")
def trained_strategy_state(bench):
    strategy = KRRStrategy(feature_map=dm.features.RandomFCNN(in_features=64, seed=0), reg=1.0, evaluator=None)
    strategy.train(bench.train_stream[0])
    return strategy


def strategy_state(strategy: KRRStrategy):
    return (strategy.memory.features_.clone(), strategy.memory.targets_.clone(), strategy.memory.n_seen_,
            strategy.model.weights.clone())


def assert_same_strategy(before, strategy: KRRStrategy) -> None:
    after = strategy_state(strategy)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert before[2] == after[2] and torch.equal(before[3], after[3])


# -- the buffer --------------------------------------------------------------------------------


def test_buffer_with_fewer_points_than_classes(buffer, bench):
    before = buffer_state(buffer)
    tight = DistilledBuffer(max_size=3)
    tight.post_adapt(None, bench.train_stream[0])
    tight_before = buffer_state(tight)
    with pytest.raises(ValueError, match=r"max_size=3 is fewer points than the 4 \(experience, class\) groups"):
        tight.post_adapt(None, bench.train_stream[1])
    assert_same_buffer(tight_before, tight)
    with pytest.raises(ValueError, match="max_size must be an integer >= 1, got 0"):
        DistilledBuffer(max_size=0)
    assert_same_buffer(before, buffer)


def test_buffer_feature_map_that_does_not_fit(buffer, bench):
    wrong = DistilledBuffer(max_size=10, feature_map=dm.features.RandomFCNN(in_features=784, seed=0))
    with pytest.raises(ValueError, match=r"does not fit the experience's inputs of shape \(1, 8, 8\) \(flattened width 64\)"):
        wrong.post_adapt(None, bench.train_stream[0])
    assert wrong.n_points == 0 and len(wrong.buffer) == 0
    before = buffer_state(buffer)
    small_images = dataset_of(torch.randn(20, 1, 4, 4), torch.tensor([2, 3] * 10))
    with pytest.raises(ValueError, match=r"inputs have shape \(1, 4, 4\), earlier ones had \(1, 8, 8\)"):
        buffer.update_from_dataset(small_images, classes=[2, 3])
    assert_same_buffer(before, buffer)
    with pytest.raises(ValueError, match="not surjective"):
        DistilledBuffer(max_size=10, feature_map=dm.features.RandomFourier(in_features=64, out_features=128, seed=0))


def test_buffer_declared_class_without_samples(buffer, bench):
    before = buffer_state(buffer)
    x, y = experience_data(bench.train_stream[1])
    declared = [*bench.train_stream[1].classes_in_this_experience, 11]
    with pytest.raises(ValueError, match=r"declares classes \[11\] that have no samples"):
        buffer.update_from_dataset(dataset_of(x, y), classes=declared)
    assert_same_buffer(before, buffer)


def test_buffer_labels_outside_declared_classes(buffer, bench):
    before = buffer_state(buffer)
    x, y = experience_data(bench.train_stream[1])
    declared = bench.train_stream[1].classes_in_this_experience[:1]
    with pytest.raises(ValueError, match=r"labels \[\d\] outside its declared classes"):
        buffer.update_from_dataset(dataset_of(x, y), classes=declared)
    with_k = DistilledBuffer(max_size=6, n_classes=5)
    with pytest.raises(ValueError, match="outside n_classes=5"):
        with_k.update_from_dataset(dataset_of(x, torch.full_like(y, 7)))
    assert_same_buffer(before, buffer)


def test_buffer_nan_inputs(buffer, bench):
    before = buffer_state(buffer)
    x, y = experience_data(bench.train_stream[1])
    x = x.clone()
    x[3, 0, 2, 2] = float("nan")
    x[5, 0, 1, 1] = float("inf")
    with pytest.raises(ValueError, match="2 of .* samples with NaN or Inf inputs"):
        buffer.update_from_dataset(dataset_of(x, y))
    assert_same_buffer(before, buffer)


def test_buffer_empty_experience_and_mixed_tasks(buffer):
    before = buffer_state(buffer)
    with pytest.raises(ValueError, match="no samples"):
        buffer.update_from_dataset(dataset_of(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.int64)))
    mixed = dataset_of(torch.randn(4, 1, 8, 8), torch.tensor([2, 3, 2, 3])).concat(
        dataset_of(torch.randn(4, 1, 8, 8), torch.tensor([2, 3, 2, 3]), task=1)
    )
    with pytest.raises(ValueError, match=r"one task label, found \[0, 1\]"):
        buffer.update_from_dataset(mixed)
    assert_same_buffer(before, buffer)


# -- KRRStrategy -----------------------------------------------------------------------------------


def test_strategy_nan_experience_through_train(bench):
    """A real Avalanche experience with NaN inputs: train raises and the memory of the first one stays."""
    x0, y0 = experience_data(bench.train_stream[0])
    x1, y1 = experience_data(bench.train_stream[1])
    x1 = x1.clone()
    x1[0, 0, 0, 0] = float("nan")
    order = [*sorted(y0.unique().tolist()), *sorted(y1.unique().tolist())]
    scenario = nc_benchmark(
        dataset_of(torch.cat([x0, x1]), torch.cat([y0, y1])), dataset_of(x0, y0).concat(dataset_of(x1, y1)),
        n_experiences=2, task_labels=False, shuffle=False, fixed_class_order=order,
    )
    strategy = KRRStrategy(feature_map=dm.features.Identity(), reg=1.0, n_classes=10, evaluator=None)
    strategy.train(scenario.train_stream[0])
    before = strategy_state(strategy)
    with pytest.raises(ValueError, match="1 of .* samples with NaN or Inf inputs"):
        strategy.train(scenario.train_stream[1])
    assert_same_strategy(before, strategy)


def test_strategy_feature_map_that_does_not_fit(trained_strategy_state):
    strategy = trained_strategy_state
    before = strategy_state(strategy)
    with pytest.raises(ValueError, match=r"does not fit the experience's inputs of shape \(1, 4, 4\) \(flattened width 16\)"):
        strategy.absorb(ExperienceData(torch.randn(10, 1, 4, 4), torch.tensor([2, 3] * 5), 0))
    assert_same_strategy(before, strategy)


def test_strategy_labels_outside_the_classes(trained_strategy_state):
    strategy = trained_strategy_state
    before = strategy_state(strategy)
    with pytest.raises(ValueError, match="class 12, outside n_classes=10"):
        strategy.absorb(ExperienceData(torch.randn(10, 1, 8, 8), torch.tensor([2, 12] * 5), 0))
    assert_same_strategy(before, strategy)


def test_strategy_declared_class_without_samples(trained_strategy_state, bench):
    strategy = trained_strategy_state
    before = strategy_state(strategy)
    x, y = experience_data(bench.train_stream[1])
    with pytest.raises(ValueError, match="declares classes"):
        strategy.absorb(read_experience(dataset_of(x, y), classes=[*y.unique().tolist(), 9 if 9 not in y else 0]))
    assert_same_strategy(before, strategy)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"reg": -1.0}, "reg must be a float >= 0"),
        ({"reg": "gcv"}, "reg must be a float >= 0"),
        ({"memory": "exemplars"}, "memory must be one of"),
        ({"reg": "auto", "memory": "per-class"}, 'reg="auto" selects lambda'),
        ({"reg": "auto", "memory": "sketch"}, "not memory='sketch'"),
        ({"ipc": 0}, "ipc must be an integer >= 1"),
        ({"max_points": 0}, "max_points must be None or an integer >= 1"),
        ({"shrink": "random"}, "shrink must be one of"),
        ({"n_classes": 0}, "n_classes must be None or an integer >= 1"),
        ({"reg_grid": []}, "reg_grid must be a non-empty"),
    ],
)
def test_strategy_rejects_bad_parameters(params, message):
    with pytest.raises(ValueError, match=message):
        KRRStrategy(feature_map=dm.features.Identity(), evaluator=None, **params)


def test_strategy_rejects_a_non_feature_map():
    with pytest.raises(TypeError, match="feature_map must be a distillmem FeatureMap"):
        KRRStrategy(feature_map=torch.nn.Linear(64, 64), evaluator=None)
