"""continual/: split benchmarks, the distilled replay buffer in real Avalanche strategies, KRRStrategy, checkpoints."""

from __future__ import annotations


import pytest
import torch
from torch import nn

avalanche = pytest.importorskip("avalanche")

from avalanche.evaluation.metrics import accuracy_metrics  # noqa: E402
from avalanche.training import LwF, Naive  # noqa: E402
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin, SupervisedPlugin  # noqa: E402

import distillmem as dm  # noqa: E402
from continual import DistilledBuffer, DistilledReplayPlugin, KRRStrategy, split_benchmark  # noqa: E402
from continual.buffer import _SAMPLE_STRIDE, _balanced_sample  # noqa: E402
from continual.checkpoint import load_memory, save_memory  # noqa: E402
from continual.strategy import select_reg  # noqa: E402
from continual.data import read_experience  # noqa: E402
from distillmem.sketch import GramSketch  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:No loggers specified:UserWarning"),
]
ACC = "Top1_Acc_Stream/eval_phase/test_stream"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def experience_tensors(exp) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 64) float64 inputs and (n,) labels of an experience."""
    items = [exp.dataset[i] for i in range(len(exp.dataset))]
    return torch.stack([it[0] for it in items]).reshape(len(items), -1).double(), torch.tensor([it[1] for it in items])


def quiet_evaluator() -> EvaluationPlugin:
    return EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])


def stream_accuracy(results: dict) -> float:
    return next(v for k, v in results.items() if k.startswith(ACC))


class Flatten(nn.Module):
    def __init__(self, width: int = 64, k: int = 10) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(width, 64), nn.ReLU(), nn.Linear(64, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class BatchSizes(SupervisedPlugin):
    """Records the size of every training minibatch, per experience."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict[int, list[int]] = {}

    def before_forward(self, strategy, **kwargs) -> None:
        exp = strategy.experience.current_experience
        self.sizes.setdefault(exp, []).append(len(strategy.mb_x))


@pytest.fixture(scope="module")
def bench():
    return split_benchmark("digits", n_experiences=5, seed=0)


@pytest.fixture(scope="module")
def exp_tensors(bench):
    return [experience_tensors(e) for e in bench.train_stream]


# -- benchmarks -----------------------------------------------------------------------


def test_split_benchmark_orders_classes_by_seed(bench):
    order = [c for e in bench.train_stream for c in e.classes_in_this_experience]
    assert sorted(order) == list(range(10))
    again = split_benchmark("digits", n_experiences=5, seed=0)
    assert [e.classes_in_this_experience for e in again.train_stream] == [
        e.classes_in_this_experience for e in bench.train_stream
    ]
    other = split_benchmark("digits", n_experiences=5, seed=1)
    assert [e.classes_in_this_experience for e in other.train_stream] != [
        e.classes_in_this_experience for e in bench.train_stream
    ]
    x, y, t = bench.train_stream[0].dataset[0]
    assert x.shape == (1, 8, 8) and isinstance(y, int) and t == 0
    assert sum(len(e.dataset) for e in bench.test_stream) == 360


def test_split_benchmark_task_labels_and_uneven_split():
    tasks = split_benchmark("digits", n_experiences=3, seed=0, task_labels=True, class_order=list(range(10)))
    assert [e.task_label for e in tasks.train_stream] == [0, 1, 2]
    assert [len(e.classes_in_this_experience) for e in tasks.train_stream] == [4, 3, 3]
    with pytest.raises(ValueError, match="n_experiences"):
        split_benchmark("digits", n_experiences=11)
    with pytest.raises(ValueError, match="class_order"):
        split_benchmark("digits", class_order=[0, 0, 1, 2, 3, 4, 5, 6, 7, 8])
    with pytest.raises(ValueError, match="name"):
        split_benchmark("svhn")


# -- the distilled buffer ---------------------------------------------------------------


@pytest.fixture(scope="module")
def filled_buffer(bench):
    """A buffer of 50 points after each of the 5 experiences: (buffer, per-step snapshots)."""
    buffer = DistilledBuffer(max_size=50, reg=1.0)
    steps = []
    for exp in bench.train_stream:
        buffer.post_adapt(None, exp)
        steps.append((buffer.n_points, buffer.points_per_class(), buffer.nbytes, list(buffer.groups)))
    return buffer, steps


def test_buffer_splits_budget_over_classes_seen(filled_buffer):
    buffer, steps = filled_buffer
    for i, (n_points, per_class, nbytes, _) in enumerate(steps):
        seen = 2 * (i + 1)
        assert len(per_class) == seen
        assert set(per_class.values()) == {50 // seen}
        assert n_points == seen * (50 // seen) <= 50
        assert nbytes == n_points * 8 * (64 + 2) + n_points * 8  # float64 points and 2-class targets, int64 labels
    x, y, t = buffer.buffer[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and isinstance(y, int) and t == 0
    assert len(buffer.buffer) == buffer.n_points
    soft = torch.stack([buffer.buffer.soft_targets[i] for i in range(len(buffer.buffer))])
    labels = torch.tensor(buffer.buffer.targets)
    assert soft.shape == (50, 10)
    # Soft labels live in the point's experience's columns and favour the point's own class.
    assert (soft.argmax(dim=1) == labels).float().mean() > 0.9


def test_buffer_groups_reproduce_each_experience_krr_head(filled_buffer, exp_tensors, bench):
    """Every group, shrunk by re-distillation four times, still gives its experience's KRR head."""
    buffer, steps = filled_buffer
    for group, (x, y), exp in zip(buffer.groups, exp_tensors, bench.train_stream):
        assert group.classes == tuple(sorted(exp.classes_in_this_experience))
        local = torch.searchsorted(torch.tensor(group.classes), y)
        teacher = dm.KRR(dm.features.Identity(), reg=1.0, n_classes=len(group.classes)).fit(x, local)
        assert rel_err(group.distilled.fit_krr().weights_, teacher.weights_) <= 1e-6
    first_then, first_now = steps[0][3][0], buffer.groups[0]
    assert len(first_then.distilled) == 50 and len(first_now.distilled) == 10
    assert rel_err(first_now.distilled.fit_krr().weights_, first_then.distilled.fit_krr().weights_) <= 1e-6


def test_buffer_fit_samples_distils_the_head_of_a_balanced_sample(bench, exp_tensors):
    """fit_samples=s: each group reproduces KRR fitted on s random samples per class of its experience."""
    buffer = DistilledBuffer(max_size=20, reg=1.0, fit_samples=30, seed=3)
    for exp in bench.train_stream[:2]:
        buffer.update_from_dataset(exp.dataset, classes=exp.classes_in_this_experience)
    for i, (group, (x, y)) in enumerate(zip(buffer.groups, exp_tensors)):
        local = torch.searchsorted(torch.tensor(group.classes), y)
        head = group.distilled.fit_krr().weights_
        # The sample the buffer drew (seeded by seed and the group's position), refitted here, gives the same head.
        pick = _balanced_sample(y, 30, torch.Generator().manual_seed(3 + _SAMPLE_STRIDE * i))
        sample = dm.KRR(dm.features.Identity(), reg=1.0, n_classes=len(group.classes)).fit(x[pick], local[pick])
        assert rel_err(head, sample.weights_) <= 1e-6
        full = dm.KRR(dm.features.Identity(), reg=1.0, n_classes=len(group.classes)).fit(x, local)
        assert rel_err(head, full.weights_) > 1e-3  # a sample's head, not the experience's
    with pytest.raises(ValueError, match="fit_samples must be an integer >= 1, got 0"):
        DistilledBuffer(max_size=20, fit_samples=0)


def test_buffer_points_stay_near_real_images(filled_buffer, exp_tensors):
    """Real init with the identity map: each point is within the spread of its class's real images."""
    buffer, _ = filled_buffer
    x_all = torch.cat([x for x, _ in exp_tensors])
    points = torch.cat([g.distilled.x for g in buffer.groups])
    nearest = torch.cdist(points, x_all).min(dim=1).values
    typical = torch.cdist(x_all[:200], x_all).topk(2, largest=False).values[:, 1].median()
    assert float(nearest.median()) < 3 * float(typical)


def test_buffer_resize_shrinks_and_rejects_too_small(bench):
    buffer = DistilledBuffer(max_size=40)
    buffer.post_adapt(None, bench.train_stream[0])
    buffer.post_adapt(None, bench.train_stream[1])
    assert buffer.n_points == 40
    buffer.resize(None, 8)
    assert buffer.n_points == 8 and buffer.max_size == 8
    with pytest.raises(ValueError, match="max_size=3 is fewer points than the 4"):
        buffer.resize(None, 3)
    assert buffer.n_points == 8 and buffer.max_size == 8


def test_soft_targets_in_batch_adds_a_fourth_item(bench):
    buffer = DistilledBuffer(max_size=10, soft_targets_in_batch=True, n_classes=10)
    buffer.post_adapt(None, bench.train_stream[0])
    item = buffer.buffer[0]
    assert len(item) == 4 and item[3].shape == (10,)


@pytest.mark.parametrize("form", ["storage_policy", "plugin"])
def test_naive_replays_the_distilled_points(bench, form):
    """A real Avalanche strategy trains with the buffer: replay batches grow by the memory's share."""
    sizes = BatchSizes()
    if form == "plugin":
        replay = DistilledReplayPlugin(mem_size=30, batch_size_mem=8)
    else:
        replay = ReplayPlugin(mem_size=30, batch_size_mem=8, storage_policy=DistilledBuffer(max_size=30))
    model = Flatten()
    strategy = Naive(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=16, train_epochs=1,
        eval_mb_size=256, plugins=[replay, sizes], evaluator=quiet_evaluator(),
    )
    for exp in bench.train_stream[:3]:
        strategy.train(exp)
    results = strategy.eval(bench.test_stream)
    assert max(sizes.sizes[0]) == 16  # no memory yet
    assert max(sizes.sizes[1]) == 16 + 8 and max(sizes.sizes[2]) == 16 + 8
    assert replay.storage_policy.n_points == 30 and replay.storage_policy.classes_seen == sorted(
        c for e in bench.train_stream[:3] for c in e.classes_in_this_experience
    )
    assert 0 <= stream_accuracy(results) <= 1


def test_lwf_task_incremental_with_the_buffer():
    tasks = split_benchmark("digits", n_experiences=5, seed=0, task_labels=True)
    replay = DistilledReplayPlugin(mem_size=20, task_balanced_dataloader=True)
    model = Flatten()
    strategy = LwF(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), criterion=nn.CrossEntropyLoss(), alpha=1.0, temperature=2.0,
        train_mb_size=32, train_epochs=1, eval_mb_size=256, plugins=[replay], evaluator=quiet_evaluator(),
    )
    for exp in tasks.train_stream[:3]:
        strategy.train(exp)
    strategy.eval(tasks.test_stream[:3])
    buffer = replay.storage_policy
    assert [g.task_label for g in buffer.groups] == [0, 1, 2]
    assert sorted(set(buffer.buffer.targets.uniques)) == buffer.classes_seen


# -- KRRStrategy ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def krr_run(bench):
    """KRRStrategy (RandomFCNN, lambda = 1, no budget) after each experience: weights, accuracy, bytes."""
    fmap = dm.features.RandomFCNN(in_features=64, seed=0)
    strategy = KRRStrategy(feature_map=fmap, reg=1.0, evaluator=quiet_evaluator())
    steps = []
    for exp in bench.train_stream:
        strategy.train(exp)
        results = strategy.eval(bench.test_stream)
        steps.append((strategy.model.weights.clone(), stream_accuracy(results), strategy.memory_nbytes))
    return strategy, steps


def test_krr_strategy_equals_joint_krr_after_every_experience(krr_run, exp_tensors, bench):
    strategy, steps = krr_run
    x_test, y_test = experience_tensors_all(bench.test_stream)
    for i, (weights, accuracy, _) in enumerate(steps):
        x = torch.cat([x for x, _ in exp_tensors[: i + 1]])
        y = torch.cat([y for _, y in exp_tensors[: i + 1]])
        joint = dm.KRR(dm.features.RandomFCNN(in_features=64, seed=0), reg=1.0, n_classes=10).fit(x, y)
        assert rel_err(weights, joint.weights_) <= 1e-6
        assert abs(accuracy - joint.score(x_test, y_test)) <= 5e-4
    assert rel_err(strategy.memory.fit_krr(reg=1.0).weights_, joint.weights_) <= 1e-6
    assert steps[-1][1] > 0.9


def experience_tensors_all(stream) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [experience_tensors(e) for e in stream]
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


def test_krr_strategy_memory_bytes_flat_in_stream_length(bench):
    """Twice through the stream (10 experiences): bytes stay at most p (p + k) float64 and stop growing."""
    strategy = KRRStrategy(feature_map=dm.features.Identity(), reg=1.0, evaluator=quiet_evaluator())
    budget = KRRStrategy(feature_map=dm.features.Identity(), reg=1.0, max_points=20, evaluator=quiet_evaluator())
    exact_bytes, budget_bytes = [], []
    for exp in list(bench.train_stream) * 2:
        strategy.train(exp)
        budget.train(exp)
        exact_bytes.append(strategy.memory_nbytes)
        budget_bytes.append(budget.memory_nbytes)
    assert max(exact_bytes) <= 8 * 64 * (64 + 10)
    assert exact_bytes[5:] == [exact_bytes[4]] * 5
    assert budget_bytes == [8 * 20 * (64 + 10)] * 10
    assert budget.memory.n_seen_ == strategy.memory.n_seen_ == 2 * sum(len(e.dataset) for e in bench.train_stream)


def test_krr_strategy_budget_trades_exactness_for_size(krr_run, bench):
    _, steps = krr_run
    small = KRRStrategy(feature_map=dm.features.RandomFCNN(in_features=64, seed=0), reg=1.0, max_points=16,
                        evaluator=quiet_evaluator())
    for exp in bench.train_stream:
        small.train(exp)
        assert small.memory_points <= 16
    error = rel_err(small.model.weights, steps[-1][0])
    assert 1e-6 < error < 1
    assert stream_accuracy(small.eval(bench.test_stream)) > 0.5


def test_select_reg_is_gcv_of_the_data(exp_tensors):
    """GCV from the memory's spectrum equals GCV computed on the data with the hat matrix."""
    x = torch.cat([x for x, _ in exp_tensors[:2]])
    y = torch.cat([y for _, y in exp_tensors[:2]])
    fmap = dm.features.RandomFCNN(in_features=64, seed=0)
    memory = dm.MomentMemory(fmap, 10).update(x, y)
    grid = [1e-2, 1e-1, 1.0, 10.0, 100.0]
    phi = fmap(x)
    targets = torch.nn.functional.one_hot(y, 10).double()
    scores = []
    for reg in grid:
        hat = phi @ torch.linalg.solve(phi.T @ phi + reg * torch.eye(64, dtype=torch.float64), phi.T)
        rss = float((targets - hat @ targets).square().sum())
        scores.append(rss / (1 - float(hat.trace()) / len(y)) ** 2)
    assert select_reg(memory, grid) == grid[min(range(len(grid)), key=scores.__getitem__)]
    strategy_auto = KRRStrategy(feature_map=fmap, reg="auto", reg_grid=grid, n_classes=10, evaluator=quiet_evaluator())
    assert strategy_auto.reg == "auto"


def test_krr_strategy_auto_reg_refits_at_the_chosen_lambda(bench):
    strategy = KRRStrategy(feature_map=dm.features.RandomFCNN(in_features=64, seed=0), reg="auto",
                           reg_grid=[1e-3, 1.0, 1e3], evaluator=quiet_evaluator())
    for exp in bench.train_stream[:2]:
        strategy.train(exp)
        assert strategy.reg_ in (1e-3, 1.0, 1e3)
        assert torch.equal(strategy.model.weights, strategy.memory.fit_krr(strategy.reg_).weights_)


def test_sketch_memory_keeps_cross_moments_exact_and_bounds_bytes(krr_run, exp_tensors, bench):
    """memory="sketch": exact without a rank; with rank r and no correction, R stays exact and the Gram takes r rows."""
    _, steps = krr_run
    exact = KRRStrategy(feature_map=dm.features.RandomFCNN(in_features=64, seed=0), reg=1.0, memory="sketch",
                        evaluator=quiet_evaluator())
    small = KRRStrategy(feature_map=dm.features.RandomFCNN(in_features=64, seed=0), reg=1.0, memory="sketch",
                        max_points=16, correction=False, evaluator=quiet_evaluator())
    sizes = []
    for exp in bench.train_stream:
        exact.train(exp)
        small.train(exp)
        assert small.memory_points <= 16
        sizes.append(small.memory_nbytes)
    assert sizes == [small.memory.nbytes] * 5 and sizes[0] < exact.memory_nbytes
    assert rel_err(exact.model.weights, steps[-1][0]) <= 1e-6
    x = torch.cat([x for x, _ in exp_tensors])
    y = torch.cat([y for _, y in exp_tensors])
    cross = dm.features.RandomFCNN(in_features=64, seed=0)(x).T @ torch.nn.functional.one_hot(y, 10).double()
    assert rel_err(small.memory.cross_, cross) <= 1e-12
    assert 1e-6 < rel_err(small.model.weights, steps[-1][0]) < 1


def test_sketch_budget_counts_eigen_rows_and_the_correction_folds_into_the_cross_moments(bench):
    """max_points = eigen-rows; beside them k rows: R - C with the correction (folded), R without; same bytes."""
    def make(**kw) -> KRRStrategy:
        return KRRStrategy(feature_map=dm.features.RandomFCNN(in_features=64, seed=0), reg=1.0, memory="sketch",
                           evaluator=quiet_evaluator(), **kw)

    corrected, plain, tiny, exact = make(max_points=16), make(max_points=16, correction=False), make(max_points=1), make()
    for exp in bench.train_stream:
        for strategy in (corrected, plain, tiny, exact):
            strategy.train(exp)
    assert corrected.memory.fold and corrected.memory.cross_ is None and corrected.memory.target_.shape == (64, 10)
    assert corrected.memory_points == plain.memory_points == 16 and tiny.memory_points == 1
    assert corrected.memory_nbytes == plain.memory_nbytes == (16 * 64 + 64 * 10 + 64 + 1) * 8
    # At equal bytes the folded correction brings the head nearer the exact (joint) one than the plain sketch.
    assert rel_err(corrected.model.weights, exact.model.weights) < rel_err(plain.model.weights, exact.model.weights)
    # One truncation per experience: the memory is the sketch updated with each experience in turn.
    fmap = dm.features.RandomFCNN(in_features=64, seed=0)
    sequential = GramSketch(fmap, 10, rank=16, reg=1.0, fold=True)
    for exp in bench.train_stream:
        data = read_experience(exp.dataset)
        sequential.update(data.x.reshape(len(data.x), -1).to(torch.float64), data.y)
    torch.testing.assert_close(corrected.memory.target_, sequential.target_, rtol=1e-9, atol=1e-9)
    assert rel_err(corrected.model.weights, sequential.fit_krr(1.0).weights_) < 1e-9


def test_per_class_memory_reproduces_its_refitted_head(bench):
    strategy = KRRStrategy(feature_map=dm.features.Identity(), reg=1.0, memory="per-class", ipc=3,
                           evaluator=quiet_evaluator())
    for i, exp in enumerate(bench.train_stream[:3]):
        strategy.train(exp)
        assert len(strategy.memory) == 3 * 2 * (i + 1)
        seen = list(strategy.memory_classes_)
        assert rel_err(strategy.memory.fit_krr().weights_, strategy.model.weights[seen]) <= 1e-6
    assert stream_accuracy(strategy.eval(bench.test_stream)) > 0


# -- checkpoints ----------------------------------------------------------------------------


@pytest.mark.parametrize("memory, correction", [("moments", True), ("sketch", True), ("sketch", False),
                                                ("per-class", True)])
def test_checkpoint_resume_gives_the_same_memory_and_results(bench, tmp_path, memory, correction):
    def make(correction: bool = correction) -> KRRStrategy:
        return KRRStrategy(feature_map=dm.features.RandomFCNN(in_features=64, seed=0), reg=1.0, max_points=30,
                           memory=memory, correction=correction, ipc=4, evaluator=quiet_evaluator())

    straight = make()
    for exp in bench.train_stream:
        straight.train(exp)
    expected = stream_accuracy(straight.eval(bench.test_stream))

    first = make()
    for exp in bench.train_stream[:2]:
        first.train(exp)
    path = save_memory(first, tmp_path / "memory.safetensors")
    with pytest.raises(FileExistsError):
        save_memory(first, path)
    if memory == "sketch":  # a file with (without) the correction does not load into a strategy without (with) one
        with pytest.raises(ValueError, match="holds tensors"):
            load_memory(make(not correction), path)
    resumed = load_memory(make(), path)
    assert rel_err(resumed.model.weights, first.model.weights) <= 1e-12
    for exp in bench.train_stream[2:]:
        resumed.train(exp)
    assert rel_err(resumed.model.weights, straight.model.weights) <= 1e-9
    assert stream_accuracy(resumed.eval(bench.test_stream)) == expected
    assert resumed.memory_nbytes == straight.memory_nbytes


def test_checkpoint_rejects_foreign_or_mismatched_files(bench, tmp_path):
    strategy = KRRStrategy(feature_map=dm.features.Identity(), reg=1.0, evaluator=quiet_evaluator())
    strategy.train(bench.train_stream[0])
    path = save_memory(strategy, tmp_path / "m.safetensors")
    other = KRRStrategy(feature_map=dm.features.RandomFCNN(in_features=64, seed=0), reg=1.0)
    with pytest.raises(ValueError, match="feature_map_spec"):
        load_memory(other, path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        load_memory(KRRStrategy(feature_map=dm.features.Identity(), reg=1.0), corrupt)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a file at all")
    with pytest.raises(ValueError, match="not a KRRMemory file"):
        load_memory(KRRStrategy(feature_map=dm.features.Identity(), reg=1.0), junk)


def test_avalanche_checkpointing_resumes_a_krr_strategy(bench, tmp_path):
    """Avalanche's own save_checkpoint / maybe_load_checkpoint (dill pickles: trusted files only) also resume it."""
    from avalanche.checkpointing import maybe_load_checkpoint, save_checkpoint

    def make() -> KRRStrategy:
        return KRRStrategy(feature_map=dm.features.RandomFCNN(in_features=64, seed=0), reg=1.0, max_points=30,
                           evaluator=quiet_evaluator())

    straight = make()
    for exp in bench.train_stream[:2]:
        straight.train(exp)
    save_checkpoint(straight, str(tmp_path / "strategy.pkl"))
    resumed, next_exp = maybe_load_checkpoint(make(), str(tmp_path / "strategy.pkl"))
    assert next_exp == 2 and torch.equal(resumed.model.weights, straight.model.weights)
    for exp in bench.train_stream[2:]:
        straight.train(exp)
        resumed.train(exp)
    assert torch.equal(resumed.model.weights, straight.model.weights)
    assert torch.equal(resumed.memory.features_, straight.memory.features_)


def test_krr_strategy_task_incremental_stream():
    """With task labels the head is the same joint KRR head: it scores every class seen."""
    tasks = split_benchmark("digits", n_experiences=5, seed=0, task_labels=True)
    plain = split_benchmark("digits", n_experiences=5, seed=0)
    with_tasks = KRRStrategy(feature_map=dm.features.Identity(), reg=1.0, evaluator=quiet_evaluator())
    without = KRRStrategy(feature_map=dm.features.Identity(), reg=1.0, evaluator=quiet_evaluator())
    for exp_t, exp_c in zip(tasks.train_stream, plain.train_stream):
        with_tasks.train(exp_t)
        without.train(exp_c)
    assert torch.equal(with_tasks.model.weights, without.model.weights)
    results = with_tasks.eval(tasks.test_stream)
    assert any(k.startswith(ACC) for k in results)


def test_krr_strategy_with_avalanche_metrics_and_loggers(bench, tmp_path):
    """Forgetting metrics, the text and CSV loggers and the default evaluator run unchanged on KRRStrategy."""
    from avalanche.evaluation.metrics import forgetting_metrics, loss_metrics
    from avalanche.logging import CSVLogger, TextLogger

    with open(tmp_path / "log.txt", "w") as text:
        evaluator = EvaluationPlugin(
            accuracy_metrics(epoch=True, experience=True, stream=True), loss_metrics(stream=True),
            forgetting_metrics(experience=True, stream=True),
            loggers=[TextLogger(text), CSVLogger(log_folder=str(tmp_path / "csv"))],
        )
        strategy = KRRStrategy(feature_map=dm.features.Identity(), reg=1.0, evaluator=evaluator)
        for exp in bench.train_stream[:2]:
            strategy.train(exp)
            results = strategy.eval(bench.test_stream[:2])
    assert any(k.startswith("StreamForgetting/eval_phase/test_stream") for k in results)
    assert "Top1_Acc_Stream" in (tmp_path / "log.txt").read_text()
    assert (tmp_path / "csv" / "eval_results.csv").read_text().count("\n") > 1
    default = KRRStrategy(feature_map=dm.features.Identity(), reg=1.0)
    default.train(bench.train_stream[0])
    assert 0 < stream_accuracy(default.eval(bench.test_stream[:1])) <= 1


class TrainingSetSizes(SupervisedPlugin):
    """Records the size of the dataset each experience trains on."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def before_training_exp(self, strategy, **kwargs) -> None:
        self.sizes.append(len(strategy.adapted_dataset))


def test_er_ace_and_gdumb_take_the_buffer_as_their_storage_policy(bench):
    """Strategies with a built-in storage policy use the distilled buffer once it is put in its place."""
    from avalanche.training import ER_ACE, GDumb
    from avalanche.training.plugins import GDumbPlugin

    model = Flatten()
    er_ace = ER_ACE(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), criterion=nn.CrossEntropyLoss(),
                    mem_size=30, batch_size_mem=8, train_mb_size=16, train_epochs=1, evaluator=quiet_evaluator())
    er_ace.storage_policy = DistilledBuffer(max_size=30)
    model = Flatten()
    sizes = TrainingSetSizes()
    gdumb = GDumb(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), criterion=nn.CrossEntropyLoss(),
                  mem_size=30, train_mb_size=16, train_epochs=1, plugins=[sizes], evaluator=quiet_evaluator())
    gdumb_plugin = next(p for p in gdumb.plugins if isinstance(p, GDumbPlugin))
    gdumb_plugin.storage_policy = DistilledBuffer(max_size=30)
    for exp in bench.train_stream[:3]:
        er_ace.train(exp)
        gdumb.train(exp)
    assert er_ace.storage_policy.n_points == 30 and len(er_ace.storage_policy.classes_seen) == 6
    assert gdumb_plugin.storage_policy.n_points == 30
    # GDumb trains on the memory only: 30, then 28 (7 per class), then 30 distilled points.
    assert sizes.sizes == [30, 28, 30]


@pytest.mark.parametrize(
    ("feature_map", "init"),
    [(dm.features.RandomFCNN(in_features=64, seed=0), "real"), (dm.features.Identity(), "noise")],
)
def test_buffer_other_maps_and_inits_keep_the_head_through_shrinking(bench, exp_tensors, feature_map, init):
    buffer = DistilledBuffer(max_size=24, feature_map=feature_map, reg=1.0, init=init)
    for exp in bench.train_stream[:2]:
        buffer.post_adapt(None, exp)
    x, y = exp_tensors[0]
    group = buffer.groups[0]
    assert len(group.distilled) == 12  # shrunk from 24 to 6 per class
    local = torch.searchsorted(torch.tensor(group.classes), y)
    teacher = dm.KRR(feature_map, reg=1.0, n_classes=2).fit(x, local)
    assert rel_err(group.distilled.fit_krr().weights_, teacher.weights_) <= 1e-6


def test_buffer_reports_the_time_its_updates_took(bench):
    buffer = DistilledBuffer(max_size=40)
    assert buffer.update_seconds == 0.0
    buffer.update_from_dataset(bench.train_stream[0].dataset)
    first = buffer.update_seconds
    assert first > 0
    with pytest.raises(ValueError):
        buffer.update_from_dataset(bench.train_stream[1].dataset, classes=[99])  # a declared class with no samples
    assert buffer.update_seconds == first  # a failed update is not counted
    buffer.update_from_dataset(bench.train_stream[1].dataset)
    assert buffer.update_seconds > first


def test_strategies_raise_no_avalanche_constructor_warning():
    """Avalanche warns about strategies whose __init__ takes positional arguments; ours take keywords only."""
    import warnings

    from avalanche.training.templates.base import PositionalArgumentsDeprecatedWarning

    from continual.ncm import NCMStrategy

    with warnings.catch_warnings():
        warnings.simplefilter("error", PositionalArgumentsDeprecatedWarning)
        KRRStrategy(feature_map=dm.features.Identity(), evaluator=quiet_evaluator())
        NCMStrategy(feature_map=dm.features.Identity(), evaluator=quiet_evaluator())
