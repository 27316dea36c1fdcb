"""Tests for RandomConv: forward against an unfold reference, exact preimages, surjectivity, specs."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from distillmem import KRR, DistilledSet, KRRDistiller
from distillmem.features import RandomConv, from_spec
from distillmem.features import conv as conv_module

# name -> kwargs of a surjective configuration (small images, float64 problems).
SURJECTIVE = {
    "patches": dict(image_shape=(1, 8, 8)),  # k = stride = 2, 4 channels: p = d = 64
    "patches-narrow": dict(image_shape=(2, 6, 6), channels=5),  # p = 45 < d = 72
    "patches-gaps": dict(image_shape=(1, 7, 7), kernel_size=2, stride=3, channels=3),  # stride > k, uncovered pixels
    "two-layers": dict(image_shape=(1, 8, 8), channels=(4, 16)),
    "overlap-valid": dict(image_shape=(2, 7, 7), kernel_size=3, stride=1, channels=2),  # p = 50 < d = 98
    "overlap-padded": dict(image_shape=(1, 8, 8), kernel_size=4, stride=2, padding=1, channels=4),  # p = d = 64
    "mixed": dict(image_shape=(1, 8, 8), channels=(4, 3), kernel_size=(2, 3), stride=(2, 1)),
}


def images(n: int, shape, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, math.prod(shape), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def reference_forward(fmap: RandomConv, x: torch.Tensor) -> torch.Tensor:
    """Convolution as unfold + matrix product, LeakyReLU, flatten (channel-major), layer by layer."""
    n = x.shape[0]
    h = x.reshape(n, *fmap.image_shape)
    for i in range(fmap.n_layers):
        k, s, pad = fmap.kernel_size[i], fmap.stride[i], fmap.padding[i]
        cols = F.unfold(h, k, padding=pad, stride=s)  # (n, C k k, L)
        weight = getattr(fmap, f"weight{i}").reshape(fmap.channels[i], -1)
        out = weight @ cols  # (n, c, L)
        _, h_out, w_out = fmap.shapes[i + 1]
        h = F.leaky_relu(out, fmap.negative_slope).reshape(n, fmap.channels[i], h_out, w_out)
    return h.reshape(n, -1)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


@pytest.mark.parametrize("name", list(SURJECTIVE))
def test_forward_matches_unfold_reference(name):
    fmap = RandomConv(**SURJECTIVE[name], seed=3)
    x = images(7, fmap.image_shape)
    out = fmap(x)
    assert out.shape == (7, fmap.out_features(fmap.in_features))
    assert rel(out, reference_forward(fmap, x)) < 1e-13


def test_default_is_square_non_overlapping_on_mnist_shape():
    fmap = RandomConv((1, 28, 28))
    assert (fmap.channels, fmap.kernel_size, fmap.stride, fmap.padding) == ((4,), (2,), (2,), (0,))
    assert fmap.p == fmap.in_features == 784
    assert fmap.surjective


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_keeps_input_dtype(dtype):
    fmap = RandomConv((1, 8, 8), seed=0)
    assert fmap(images(3, (1, 8, 8), dtype=dtype)).dtype == dtype


def test_weights_are_seeded_and_scaled():
    a, b, c = RandomConv((3, 8, 8), seed=1), RandomConv((3, 8, 8), seed=1), RandomConv((3, 8, 8), seed=2)
    assert torch.equal(a.weight0, b.weight0)
    assert not torch.equal(a.weight0, c.weight0)
    assert a.weight0.dtype == torch.float64 and a.weight0.shape == (12, 3, 2, 2)
    big = RandomConv((8, 64, 64), channels=64, kernel_size=4, seed=0)
    assert abs(float(big.weight0.std()) - 1 / math.sqrt(8 * 16)) < 0.01


@pytest.mark.parametrize("name", list(SURJECTIVE))
def test_preimage_round_trip(name):
    fmap = RandomConv(**SURJECTIVE[name], seed=1)
    assert fmap.surjective
    features = fmap(images(6, fmap.image_shape, seed=4))
    x = fmap.preimage(features)
    assert x.shape == (6, fmap.in_features)
    assert rel(fmap(x), features) < 1e-10


@pytest.mark.parametrize("name", ["patches-narrow", "patches-gaps", "overlap-valid"])
def test_single_layer_preimage_is_minimum_norm(name):
    fmap = RandomConv(**SURJECTIVE[name], seed=2)
    features = fmap(images(5, fmap.image_shape, seed=1))
    op = fmap.operator(0)
    expected = F.leaky_relu(features, 1 / fmap.negative_slope) @ torch.linalg.pinv(op).T
    assert rel(fmap.preimage(features), expected) < 1e-10


def test_operator_is_the_convolution():
    fmap = RandomConv((2, 7, 7), kernel_size=3, stride=2, padding=1, channels=3, seed=0)
    x = images(4, fmap.image_shape)
    linear = F.conv2d(x.reshape(4, 2, 7, 7), fmap.weight0, stride=2, padding=1).reshape(4, -1)
    assert rel(x @ fmap.operator(0).T, linear) < 1e-13


def test_conjugate_gradient_path_matches_dense(monkeypatch):
    fmap = RandomConv(**SURJECTIVE["overlap-valid"], seed=5)
    features = fmap(images(4, fmap.image_shape, seed=2))
    dense = fmap.preimage(features)
    monkeypatch.setattr(conv_module, "DENSE_MAX_ENTRIES", 0)
    cg_map = RandomConv(**SURJECTIVE["overlap-valid"], seed=5)
    assert cg_map.surjective  # decided by the CG probe now
    x = cg_map.preimage(features)
    assert rel(cg_map(x), features) < 1e-10
    assert rel(x, dense) < 1e-9


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        (dict(image_shape=(1, 8, 8), channels=5), "p > d: 5 channels per 4-pixel patch"),
        (dict(image_shape=(1, 5, 5), kernel_size=2, stride=2, padding=1, channels=2), "corner patches see 1 pixel"),
        (dict(image_shape=(1, 6, 6), kernel_size=3, stride=1, padding=1, channels=2), "overlapping, p = 72 > d = 36"),
        (dict(image_shape=(1, 8, 8), channels=(4, 20)), "second layer widens"),
    ],
)
def test_non_surjective_configurations_are_detected(kwargs, reason):
    fmap = RandomConv(**kwargs, seed=0)
    assert not fmap.surjective, reason
    with pytest.raises(ValueError, match="not surjective"):
        fmap.preimage(torch.zeros(2, fmap.p, dtype=torch.float64))


def test_rank_deficient_with_p_le_d_agrees_with_explicit_rank():
    # Padding leaves corner patches with one real pixel for two channels: p = 18 <= d = 25, rank < 18.
    fmap = RandomConv((1, 5, 5), kernel_size=2, stride=2, padding=1, channels=2, seed=0)
    assert fmap.p <= fmap.in_features
    op = fmap.operator(0)
    assert int(torch.linalg.matrix_rank(op)) < fmap.p
    assert fmap.layer_full_row_rank() == [False]
    for name in SURJECTIVE:
        ok = RandomConv(**SURJECTIVE[name], seed=0)
        assert int(torch.linalg.matrix_rank(ok.operator(0))) == math.prod(ok.shapes[1])


def test_cg_rank_probe_detects_rank_deficiency(monkeypatch):
    monkeypatch.setattr(conv_module, "DENSE_MAX_ENTRIES", 0)
    fmap = RandomConv((1, 5, 5), kernel_size=2, stride=2, padding=1, channels=2, seed=0)
    monkeypatch.setattr(fmap, "disjoint", lambda i: False)  # force the matrix-free path
    assert not fmap.surjective


def test_distill_is_exact(make_problem):
    x, y = make_problem(n=240, d=64, k=4)
    x = x.reshape(-1, 1, 8, 8)
    for kwargs in (SURJECTIVE["patches"], SURJECTIVE["two-layers"], SURJECTIVE["overlap-padded"]):
        fmap = RandomConv(**kwargs, seed=0)
        teacher = KRR(fmap, reg=1e-2).fit(x, y)
        for init in ("noise", "real"):
            distiller = KRRDistiller(ipc=3, init=init, seed=1).fit(x, y, teacher=teacher)
            assert distiller.recovery_error_ < 1e-8, (kwargs, init)
            assert distiller.distilled_.image_shape == (1, 8, 8)


def test_spec_round_trip_and_saved_set(tmp_path, make_problem):
    fmap = RandomConv((1, 8, 8), channels=(4, 3), kernel_size=(2, 3), stride=(2, 1), padding=(0, 1), negative_slope=0.2, seed=7)
    spec = json.loads(json.dumps(fmap.spec()))
    rebuilt = from_spec(spec)
    assert isinstance(rebuilt, RandomConv) and rebuilt.spec() == fmap.spec()
    x = images(5, (1, 8, 8))
    assert torch.equal(rebuilt(x), fmap(x))
    # A distilled set made with the map reloads and refits to the same model.
    xs, ys = make_problem(n=200, d=64, k=4)
    square = RandomConv((1, 8, 8), seed=2)
    teacher = KRR(square, reg=0.1).fit(xs, ys)
    distilled = KRRDistiller(ipc=2).fit(xs, ys, teacher=teacher).distilled_
    distilled.save(tmp_path / "conv.safetensors")
    loaded = DistilledSet.load(tmp_path / "conv.safetensors")
    assert rel(loaded.fit_krr().weights_, teacher.weights_) < 1e-8


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_shape=(1, 8)), "image_shape"),
        (dict(image_shape=(1, 8, 8), channels=0), "channels"),
        (dict(image_shape=(1, 8, 8), channels=(4, 4), kernel_size=(2, 2, 2)), "kernel_size"),
        (dict(image_shape=(1, 8, 8), stride=0), "stride"),
        (dict(image_shape=(1, 8, 8), padding=2), "padding"),
        (dict(image_shape=(1, 3, 3), kernel_size=5, stride=1), "does not fit"),
        (dict(image_shape=(1, 8, 8), negative_slope=0.0), "negative_slope"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RandomConv(**kwargs)


def test_wrong_input_width_is_rejected():
    fmap = RandomConv((1, 8, 8))
    with pytest.raises(ValueError, match=r"\(n, 64\)"):
        fmap.check_input(torch.zeros(3, 63))
    with pytest.raises(ValueError, match=r"\(n, 64\)"):
        fmap.preimage(torch.zeros(3, 63, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(n, 64\)"):
        KRR(fmap, reg=1.0).fit(torch.zeros(4, 63, dtype=torch.float64), torch.tensor([0, 1, 0, 1]))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(image_shape=(2, 7, 7), kernel_size=3, stride=2, padding=1, channels=3),  # p = 48 <= d = 98: adjoint
        dict(image_shape=(1, 5, 5), kernel_size=3, stride=1, padding=1, channels=3),  # p = 75 > d = 25: forward
    ],
)
def test_operator_from_either_side_matches_conv(kwargs):
    fmap = RandomConv(**kwargs, seed=1)
    x = images(4, fmap.image_shape, seed=5)
    n = x.shape[0]
    linear = F.conv2d(x.reshape(n, *fmap.image_shape), fmap.weight0, stride=fmap.stride[0], padding=fmap.padding[0])
    assert fmap.operator(0).shape == (fmap.p, fmap.in_features)
    assert rel(x @ fmap.operator(0).T, linear.reshape(n, -1)) < 1e-13
