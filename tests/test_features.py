"""Tests for distillmem.features: preimages, seeding, specs and argument checks."""

from __future__ import annotations

import json
import math

import pytest
import torch

from distillmem import features
from distillmem.features import FeatureMap, Identity, RandomFCNN, RandomFourier, from_spec

D = 40

# name -> factory(seed) of a surjective map on R^40.
SURJECTIVE = {
    "identity": lambda seed: Identity(),
    "identity-40": lambda seed: Identity(D),
    "fcnn-square": lambda seed: RandomFCNN(D, seed=seed),
    "fcnn-narrowing": lambda seed: RandomFCNN(D, widths=(30, 20), seed=seed),
    "rff-square": lambda seed: RandomFourier(D, sigma=4.0, seed=seed),
    "rff-narrow": lambda seed: RandomFourier(D, 20, sigma=4.0, seed=seed),
}
SEEDED = [name for name in SURJECTIVE if not name.startswith("identity")]
UNBOUNDED = ["identity", "identity-40", "fcnn-square", "fcnn-narrowing"]
FOURIER = ["rff-square", "rff-narrow"]


def inputs(n: int = 25, d: int = D, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


# -- shapes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, p", [("identity", D), ("fcnn-square", D), ("fcnn-narrowing", 20), ("rff-square", D), ("rff-narrow", 20)]
)
def test_output_width_matches_out_features(name, p):
    fmap = SURJECTIVE[name](0)
    assert fmap.out_features(D) == p
    assert fmap(inputs()).shape == (25, p)


@pytest.mark.parametrize("name", list(SURJECTIVE))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_keeps_input_dtype(name, dtype):
    assert SURJECTIVE[name](0)(inputs(dtype=dtype)).dtype == dtype


def test_fcnn_forward_matches_explicit_leaky_relu_network():
    fmap = RandomFCNN(D, widths=(30, 20), negative_slope=0.2, seed=5)
    x = inputs()
    h = x
    for w in (fmap.weight0, fmap.weight1):
        a = h @ w.T
        h = torch.where(a > 0, a, 0.2 * a)
    torch.testing.assert_close(fmap(x), h, rtol=1e-14, atol=1e-14)


def test_rff_forward_matches_cosine_formula():
    fmap = RandomFourier(D, 20, sigma=4.0, seed=5)
    x = inputs()
    expected = math.sqrt(2.0 / 20) * torch.cos(x @ fmap.freqs.T + fmap.phases)
    torch.testing.assert_close(fmap(x), expected, rtol=1e-13, atol=1e-14)


def test_rff_kernel_approximates_gaussian_kernel():
    # With many features <phi(x), phi(x')> ~ exp(-|x - x'|^2 / (2 sigma^2)).
    fmap = RandomFourier(4, 20000, sigma=2.0, seed=0)
    x = 0.7 * inputs(n=6, d=4)
    approx = fmap(x) @ fmap(x).T
    exact = torch.exp(-torch.cdist(x, x) ** 2 / (2 * 2.0**2))
    assert float((approx - exact).abs().max()) < 0.05


# -- preimages ------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SURJECTIVE))
def test_preimage_of_image_round_trips(name):
    fmap = SURJECTIVE[name](1)
    feats = fmap(inputs(seed=2))
    assert rel(fmap(fmap.preimage(feats)), feats) < 1e-11


@pytest.mark.parametrize("name", UNBOUNDED)
def test_preimage_of_arbitrary_features_round_trips(name):
    fmap = SURJECTIVE[name](1)
    p = fmap.out_features(D)
    feats = 3.0 * inputs(n=30, d=p, seed=3)
    assert rel(fmap(fmap.preimage(feats)), feats) < 1e-11


@pytest.mark.parametrize("name", UNBOUNDED)
def test_range_scale_is_one_for_unbounded_maps(name):
    fmap = SURJECTIVE[name](1)
    assert fmap.range_scale(100.0 * inputs(d=fmap.out_features(D))) == 1.0


@pytest.mark.parametrize("name", FOURIER)
def test_rff_rescaled_arbitrary_features_round_trip(name):
    fmap = SURJECTIVE[name](1)
    feats = 5.0 * inputs(n=30, d=fmap.out_features(D), seed=3)
    scaled = feats / fmap.range_scale(feats)
    assert rel(fmap(fmap.preimage(scaled)), scaled) < 1e-10


@pytest.mark.parametrize("name", FOURIER)
def test_rff_range_scale_brings_features_just_inside_the_range(name):
    fmap = SURJECTIVE[name](1)
    p = fmap.out_features(D)
    feats = 5.0 * inputs(n=30, d=p, seed=3)
    peak = float((feats / fmap.range_scale(feats)).abs().max()) * math.sqrt(p / 2)
    assert 1.0 - 1e-5 < peak < 1.0


@pytest.mark.parametrize("name", FOURIER)
def test_rff_preimage_rejects_features_outside_the_range(name):
    fmap = SURJECTIVE[name](1)
    feats = 5.0 * inputs(n=3, d=fmap.out_features(D))
    with pytest.raises(ValueError, match="outside the range"):
        fmap.preimage(feats)


@pytest.mark.parametrize(
    "fmap, weight",
    [
        (RandomFCNN(D, widths=(30, 20), seed=7), "weight0"),
        (RandomFourier(D, 20, sigma=4.0, seed=7), "freqs"),
    ],
    ids=["fcnn-narrowing", "rff-narrow"],
)
def test_narrowing_preimage_is_minimum_norm(fmap, weight):
    # The least-squares preimage of a wide-to-narrow first layer lies in the row space of its weight.
    x = fmap.preimage(fmap(inputs(seed=4)))
    w = getattr(fmap, weight)
    projector = torch.linalg.pinv(w) @ w
    assert rel(x @ projector, x) < 1e-12


# -- seeding and specs ------------------------------------------------------------


@pytest.mark.parametrize("name", SEEDED)
def test_same_seed_gives_identical_parameters(name):
    a, b = SURJECTIVE[name](11), SURJECTIVE[name](11)
    buffers_a, buffers_b = dict(a.named_buffers()), dict(b.named_buffers())
    assert buffers_a.keys() == buffers_b.keys() and len(buffers_a) > 0
    assert all(torch.equal(buffers_a[key], buffers_b[key]) for key in buffers_a)


@pytest.mark.parametrize("name", SEEDED)
def test_different_seed_gives_different_parameters(name):
    a, b = SURJECTIVE[name](11), SURJECTIVE[name](12)
    buffers_b = dict(b.named_buffers())
    assert all(not torch.equal(value, buffers_b[key]) for key, value in a.named_buffers())


@pytest.mark.parametrize("name", SEEDED)
def test_parameters_are_float64_and_frozen(name):
    fmap = SURJECTIVE[name](0)
    assert all(b.dtype == torch.float64 for b in fmap.buffers())
    assert all(not p.requires_grad for p in fmap.parameters())


@pytest.mark.parametrize("name", list(SURJECTIVE))
def test_from_spec_rebuilds_identical_map(name):
    fmap = SURJECTIVE[name](13)
    spec = json.loads(json.dumps(fmap.spec()))  # specs survive JSON
    rebuilt = from_spec(spec)
    x = inputs(seed=5)
    assert type(rebuilt) is type(fmap)
    assert rebuilt.spec() == fmap.spec()
    assert torch.equal(rebuilt(x), fmap(x))


def test_spec_records_the_seed():
    assert RandomFCNN(D, seed=123).spec()["seed"] == 123
    assert RandomFourier(D, seed=321).spec()["seed"] == 321


def test_from_spec_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown feature map"):
        from_spec({"name": "no-such-map", "params": {}})


def test_from_spec_rejects_non_dict():
    with pytest.raises(ValueError, match="must be a dict with a 'name'"):
        from_spec(["fcnn"])


def test_package_exports_the_maps():
    assert {"FeatureMap", "Identity", "RandomFCNN", "RandomFourier", "from_spec"} <= set(features.__all__)
    assert all(issubclass(cls, FeatureMap) for cls in (Identity, RandomFCNN, RandomFourier))


# -- surjectivity -----------------------------------------------------------------


@pytest.mark.parametrize("name", list(SURJECTIVE))
def test_non_expanding_maps_are_surjective(name):
    assert SURJECTIVE[name](0).surjective is True


WIDENING = pytest.mark.parametrize(
    "fmap, width",
    [
        (RandomFCNN(20, widths=(40,), seed=0), 40),
        (RandomFCNN(D, widths=(20, 30), seed=0), 30),
        (RandomFourier(20, 40, seed=0), 40),
    ],
    ids=["fcnn-widening", "fcnn-narrow-then-wide", "rff-p>d"],
)


@WIDENING
def test_widening_maps_are_not_surjective(fmap, width):
    assert fmap.out_features(fmap.in_features) == width
    assert fmap.surjective is False


@WIDENING
def test_widening_maps_have_no_preimage(fmap, width):
    feats = 0.01 * inputs(n=3, d=width)
    with pytest.raises(ValueError, match="not surjective"):
        fmap.preimage(feats)


# -- argument checks ----------------------------------------------------------------


@pytest.mark.parametrize("slope", [0.0, -0.1, float("nan")])
def test_fcnn_rejects_non_positive_slope(slope):
    with pytest.raises(ValueError, match="negative_slope must be (> 0|a finite number)"):
        RandomFCNN(D, negative_slope=slope)


@pytest.mark.parametrize("widths", [(), [], (10, 0), (-3,)])
def test_fcnn_rejects_bad_widths(widths):
    with pytest.raises(ValueError, match=r"widths must be a non-empty sequence of positive ints|widths\[\d\] must be >= 1"):
        RandomFCNN(D, widths=widths)


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan")])
def test_rff_rejects_non_positive_sigma(sigma):
    with pytest.raises(ValueError, match="sigma must be (> 0|a finite number)"):
        RandomFourier(D, sigma=sigma)


@pytest.mark.parametrize(
    "build",
    [
        lambda: RandomFCNN(0),
        lambda: RandomFourier(0),
        lambda: RandomFourier(D, 0),
        lambda: Identity(0),
    ],
    ids=["fcnn-d0", "rff-d0", "rff-p0", "identity-d0"],
)
def test_maps_reject_zero_width(build):
    with pytest.raises(ValueError, match="must be >= 1"):
        build()


@pytest.mark.parametrize("name", ["identity-40", "fcnn-square", "fcnn-narrowing", "rff-square", "rff-narrow"])
@pytest.mark.parametrize("width", [D - 1, D + 1])
def test_check_input_rejects_wrong_width(name, width):
    with pytest.raises(ValueError, match=r"expects inputs of shape \(n, 40\)"):
        SURJECTIVE[name](0).check_input(inputs(d=width))


@pytest.mark.parametrize("name", ["identity-40", "fcnn-square", "rff-square"])
def test_check_input_rejects_one_dimensional_input(name):
    with pytest.raises(ValueError, match="expects inputs of shape"):
        SURJECTIVE[name](0).check_input(torch.zeros(D, dtype=torch.float64))


@pytest.mark.parametrize("name", ["identity-40", "fcnn-square", "fcnn-narrowing", "rff-square", "rff-narrow"])
def test_check_input_accepts_right_width(name):
    SURJECTIVE[name](0).check_input(inputs())  # must not raise
    assert SURJECTIVE[name](0)(inputs()).shape[0] == 25


def test_identity_without_width_accepts_any_width():
    fmap = Identity()
    x = inputs(d=7)
    fmap.check_input(x)
    assert torch.equal(fmap(x), x)


@pytest.mark.parametrize("name", ["fcnn-square", "fcnn-narrowing", "rff-square", "rff-narrow"])
def test_preimage_rejects_wrong_feature_width(name):
    fmap = SURJECTIVE[name](0)
    wrong = fmap.out_features(D) + 1
    with pytest.raises(ValueError, match="expects inputs of shape"):
        fmap.preimage(0.01 * inputs(d=wrong))


def test_on_device_returns_the_map_itself_or_a_moved_copy():
    fmap = RandomFCNN(in_features=12, seed=0)
    assert fmap.on_device(torch.device("cpu")) is fmap
    moved = fmap.on_device(torch.device("meta"))  # any other device: the caller's map stays put
    assert moved is not fmap

    def tensors(module):
        return [*module.parameters(), *module.buffers()]

    assert tensors(fmap) and all(t.device.type == "meta" for t in tensors(moved))
    assert all(t.device.type == "cpu" for t in tensors(fmap))
