"""Random convolutional LeakyReLU network: a structured linear map with an exact inverse.

A bias-free convolution is a linear map A: R^d -> R^p (docs/math.md §6.2, CNN
recipe). When A has full row rank p <= d, phi = LeakyReLU o A is surjective and
its minimum-norm preimage is A^+ LeakyReLU^{-1}(f). Two ways to apply A^+ are
used, neither forming a d x d matrix:

* non-overlapping patches (stride >= kernel_size): A is block diagonal, one
  (out_channels, C k k) block per patch position (columns of padded pixels
  removed), so A^+ is the block-wise pseudo-inverse, exact at any image size;
* overlapping patches: the (p, d) operator itself when it is small (at most
  ``DENSE_MAX_ENTRIES`` entries), otherwise conjugate gradients on the normal
  equations A A^T y = a with A and A^T applied by conv2d / conv_transpose2d,
  and x = A^T y.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .._validation import check_int, check_real
from .base import FeatureMap, check_width

#: Overlapping layers whose (p, d) operator has at most this many entries are
#: inverted (and rank-checked) through the explicit operator; larger ones by CG.
DENSE_MAX_ENTRIES = 2**22
#: Relative residual at which the CG solve of an overlapping layer stops.
CG_TOL = 1e-13
CG_MAX_ITER = 10_000
#: CG stops when no residual improved by 2% for this many iterations.
CG_STALL_ITER = 100
#: A large overlapping layer counts as full row rank when CG solves a random
#: right-hand side to this relative residual.
RANK_PROBE_TOL = 1e-8


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _per_layer(value: Any, n_layers: int, what: str, minimum: int) -> tuple[int, ...]:
    values = (value,) * n_layers if _is_int(value) else tuple(value)
    if len(values) != n_layers or not all(_is_int(v) for v in values):
        raise ValueError(f"{what} must be an int or a sequence of {n_layers} ints (one per layer), got {value!r}")
    values = tuple(int(v) for v in values)
    if min(values) < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value!r}")
    return values


class RandomConv(FeatureMap):
    """phi(x) = LeakyReLU(conv_L(... LeakyReLU(conv_1(x)))), flattened; frozen, no bias.

    Inputs are flattened images (n, C*H*W) of shape ``image_shape``; outputs
    are the flattened (n, out_channels_L * H_L * W_L) activations, channel
    major as ``torch.flatten``. Layer l has weights (c_l, c_{l-1}, k_l, k_l)
    with entries N(0, 1 / (c_{l-1} k_l^2)) drawn in float32 from ``seed`` (as
    RandomFCNN) and kept in float64.

    The default, ``kernel_size=2`` with ``stride=kernel_size`` and
    ``channels=(C * k * k,)``, cuts the image into non-overlapping k x k
    patches and maps each by a square random matrix: p = d when k divides H
    and W (784 for MNIST). ``surjective`` checks that every layer's operator
    has full row rank (exactly: per patch block, or through the explicit
    operator; numerically by a CG probe for large overlapping layers).

    Parameters
    ----------
    image_shape : (C, H, W)
    channels : int or sequence of int, optional
        Output channels per layer (its length is the number of layers);
        default one layer with C * k^2 channels.
    kernel_size : int or sequence of int
        Square kernel size, per layer or shared.
    stride : int or sequence of int, optional
        Default ``kernel_size`` (non-overlapping patches).
    padding : int or sequence of int
        Zero padding on each side.
    negative_slope : float
        alpha > 0 of the LeakyReLU.
    seed : int
    """

    name = "conv"

    def __init__(
        self,
        image_shape: Sequence[int],
        channels: int | Sequence[int] | None = None,
        kernel_size: int | Sequence[int] = 2,
        stride: int | Sequence[int] | None = None,
        padding: int | Sequence[int] = 0,
        negative_slope: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        shape = tuple(image_shape)
        if len(shape) != 3 or not all(_is_int(s) and s >= 1 for s in shape):
            raise ValueError(f"image_shape must be (C, H, W) of positive ints, got {image_shape!r}")
        shape = tuple(int(s) for s in shape)
        if channels is None:
            k0 = kernel_size if _is_int(kernel_size) else tuple(kernel_size)[0]
            channels = (shape[0] * int(k0) ** 2,)
        elif _is_int(channels):
            channels = (channels,)
        channels = tuple(channels)
        n_layers = len(channels)
        if n_layers == 0 or not all(_is_int(c) and c >= 1 for c in channels):
            raise ValueError(f"channels must be a positive int or a non-empty sequence of positive ints, got {channels!r}")
        channels = tuple(int(c) for c in channels)
        kernels = _per_layer(kernel_size, n_layers, "kernel_size", 1)
        strides = kernels if stride is None else _per_layer(stride, n_layers, "stride", 1)
        paddings = _per_layer(padding, n_layers, "padding", 0)
        # > 0 keeps the map invertible.
        negative_slope = check_real(negative_slope, "negative_slope", positive=True)
        for k, pad in zip(kernels, paddings):
            if pad >= k:
                raise ValueError(f"padding {pad} >= kernel_size {k} makes outputs that see only padding")
        self.image_shape = shape
        self.channels = channels
        self.kernel_size = kernels
        self.stride = strides
        self.padding = paddings
        self.negative_slope = negative_slope
        self.in_features = math.prod(shape)
        self._seed = check_int(seed, "seed")

        # Shapes (C_l, H_l, W_l) of every layer's input, then of the output.
        self.shapes = [shape]
        for c, k, s, pad in zip(channels, kernels, strides, paddings):
            _, h, w = self.shapes[-1]
            h_out, w_out = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
            if h_out < 1 or w_out < 1:
                raise ValueError(f"kernel_size {k} with padding {pad} does not fit a {h} x {w} input")
            self.shapes.append((c, h_out, w_out))
        self.p = math.prod(self.shapes[-1])

        gen = torch.Generator().manual_seed(self._seed)
        for i, (c, k) in enumerate(zip(channels, kernels)):
            fan_in = self.shapes[i][0] * k * k
            std = float(1.0 / torch.sqrt(torch.tensor(float(fan_in))))
            weight = torch.empty(c, self.shapes[i][0], k, k).normal_(0.0, std, generator=gen)
            self.register_buffer(f"weight{i}", weight.to(torch.float64))
        self._ranks: list[bool] | None = None
        self._solvers: dict[tuple[int, torch.device, torch.dtype], Any] = {}

    @property
    def n_layers(self) -> int:
        return len(self.channels)

    def out_features(self, in_features: int) -> int:
        return self.p

    def check_input(self, x: torch.Tensor) -> None:
        check_width(x, self.in_features, f"RandomConv with image_shape {self.image_shape}")

    # -- the linear layers -------------------------------------------------
    def _conv(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Layer i's linear operator on (n, C_i, H_i, W_i) images."""
        return F.conv2d(h, self._cast(f"weight{i}", h), stride=self.stride[i], padding=self.padding[i])

    def _conv_adjoint(self, i: int, a: torch.Tensor) -> torch.Tensor:
        """A_i^T on (n, c_i, H'_i, W'_i) activations, back to (n, C_i, H_i, W_i)."""
        _, h, w = self.shapes[i]
        k, s, pad = self.kernel_size[i], self.stride[i], self.padding[i]
        out_pad = (h + 2 * pad - k) % s, (w + 2 * pad - k) % s
        return F.conv_transpose2d(a, self._cast(f"weight{i}", a), stride=s, padding=pad, output_padding=out_pad)

    def disjoint(self, i: int) -> bool:
        """Whether layer i's patches do not overlap (its operator is block diagonal)."""
        return self.stride[i] >= self.kernel_size[i]

    def operator(self, i: int = 0) -> torch.Tensor:
        """The explicit (p_i, d_i) float64 matrix of layer i's convolution (for small layers and tests).

        Built from min(p_i, d_i) basis vectors: rows A^T e_j by the adjoint when
        p_i <= d_i, columns A e_j otherwise.
        """
        p_i, d_i = math.prod(self.shapes[i + 1]), math.prod(self.shapes[i])
        device = self.weight0.device
        if p_i <= d_i:
            basis = torch.eye(p_i, dtype=torch.float64, device=device).reshape(p_i, *self.shapes[i + 1])
            return self._conv_adjoint(i, basis).reshape(p_i, d_i)
        basis = torch.eye(d_i, dtype=torch.float64, device=device).reshape(d_i, *self.shapes[i])
        return self._conv(i, basis).reshape(d_i, p_i).T.contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], *self.image_shape)
        for i in range(self.n_layers):
            h = F.leaky_relu(self._conv(i, h), self.negative_slope)
        return h.reshape(x.shape[0], -1)

    # -- surjectivity ----------------------------------------------------------
    def layer_full_row_rank(self) -> list[bool]:
        """Per layer: whether its (p_l, d_l) operator has full row rank p_l (cached)."""
        if self._ranks is None:
            self._ranks = [self._full_row_rank(i) for i in range(self.n_layers)]
        return list(self._ranks)

    @property
    def surjective(self) -> bool:
        return all(self.layer_full_row_rank())

    def _full_row_rank(self, i: int) -> bool:
        p_i, d_i = math.prod(self.shapes[i + 1]), math.prod(self.shapes[i])
        if p_i > d_i:
            return False
        if self.disjoint(i):
            blocks, _ = self._patch_blocks(i, torch.float64, self.weight0.device)
            return all(
                int(torch.linalg.matrix_rank(block, rtol=max(block.shape) * torch.finfo(block.dtype).eps)) == block.shape[0]
                for block in blocks
            )
        if p_i * d_i <= DENSE_MAX_ENTRIES:
            op = self.operator(i)
            return int(torch.linalg.matrix_rank(op, rtol=max(op.shape) * torch.finfo(op.dtype).eps)) == p_i
        # Numerical probe: a rank-deficient A A^T leaves a random right-hand side unsolved.
        gen = torch.Generator().manual_seed(12345 + i)
        rhs = torch.randn(1, *self.shapes[i + 1], generator=gen, dtype=torch.float64).to(self.weight0.device)
        _, residual = self._cg_solve(i, rhs)
        return residual <= RANK_PROBE_TOL

    # -- preimage ----------------------------------------------------------
    def preimage(self, features: torch.Tensor) -> torch.Tensor:
        """The minimum-norm x (m, d) with phi(x) = features (m, p), layer by layer."""
        check_width(features, self.p, "RandomConv.preimage")
        ranks = self.layer_full_row_rank()
        if not all(ranks):
            bad = [i for i, ok in enumerate(ranks) if not ok]
            raise ValueError(
                f"RandomConv layer(s) {bad} do not have full row rank (p_l > d_l or a rank-deficient "
                f"operator: channels={list(self.channels)}, kernel_size={list(self.kernel_size)}, "
                f"stride={list(self.stride)}, padding={list(self.padding)} on {self.image_shape}), "
                "so the map is not surjective and has no exact preimage"
            )
        h = features.reshape(features.shape[0], *self.shapes[-1])
        for i in reversed(range(self.n_layers)):
            a = F.leaky_relu(h, 1.0 / self.negative_slope)
            if self.disjoint(i):
                h = self._solve_patches(i, a)
            elif math.prod(self.shapes[i + 1]) * math.prod(self.shapes[i]) <= DENSE_MAX_ENTRIES:
                h = self._solve_dense(i, a)
            else:
                h, residual = self._cg_solve(i, a)
                if residual > 1e3 * max(CG_TOL, 10 * torch.finfo(a.dtype).eps):
                    warnings.warn(
                        f"RandomConv layer {i}: conjugate gradients stopped at relative residual {residual:.2e}",
                        stacklevel=2,
                    )
        return h.reshape(features.shape[0], -1)

    def _patch_blocks(self, i: int, dtype: torch.dtype, device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Distinct blocks W * mask (c_i, C_i k^2) over patch positions, and each position's block index."""
        c_in, h, w = self.shapes[i]
        k, s, pad = self.kernel_size[i], self.stride[i], self.padding[i]
        ones = torch.ones(1, c_in, h, w, dtype=dtype, device=device)
        masks = F.unfold(ones, k, padding=pad, stride=s)[0].T  # (L, C k^2): 1 on real pixels, 0 on padding
        patterns, index = torch.unique(masks, dim=0, return_inverse=True)
        weight = getattr(self, f"weight{i}").to(device=device, dtype=dtype).reshape(self.channels[i], -1)
        return [weight * pattern for pattern in patterns], index

    def _solve_patches(self, i: int, a: torch.Tensor) -> torch.Tensor:
        """Block-wise minimum-norm solve: each patch gets pinv(W restricted to its real pixels) a."""
        key = (i, a.device, a.dtype)
        if key not in self._solvers:
            blocks, index = self._patch_blocks(i, torch.float64, a.device)
            pinvs = torch.stack(
                [torch.linalg.pinv(b, rtol=max(b.shape) * torch.finfo(b.dtype).eps) for b in blocks]
            ).to(a.dtype)
            self._solvers[key] = (pinvs, index)
        pinvs, index = self._solvers[key]
        c_in, h, w = self.shapes[i]
        k, s, pad = self.kernel_size[i], self.stride[i], self.padding[i]
        cols = a.reshape(a.shape[0], self.channels[i], -1)  # (m, c_out, L)
        patches = torch.empty(a.shape[0], c_in * k * k, cols.shape[2], dtype=a.dtype, device=a.device)
        for j in range(pinvs.shape[0]):
            where = (index == j).nonzero().flatten()
            patches[:, :, where] = pinvs[j] @ cols[:, :, where]
        # Patches are disjoint, so fold only places them (padding is cut, gaps stay 0).
        return F.fold(patches, (h, w), k, padding=pad, stride=s)

    def _solve_dense(self, i: int, a: torch.Tensor) -> torch.Tensor:
        key = (i, a.device, a.dtype)
        if key not in self._solvers:
            op = self.operator(i).to(a.device)
            self._solvers[key] = torch.linalg.pinv(op, rtol=max(op.shape) * torch.finfo(op.dtype).eps).to(a.dtype)
        flat = a.reshape(a.shape[0], -1) @ self._solvers[key].T
        return flat.reshape(a.shape[0], *self.shapes[i])

    def _cg_solve(self, i: int, a: torch.Tensor) -> tuple[torch.Tensor, float]:
        """x = A^T y with A A^T y = a by batched conjugate gradients; returns x and the worst relative residual."""
        m = a.shape[0]
        b = a.reshape(m, -1)
        y = torch.zeros_like(b)
        r = b.clone()
        d = r.clone()
        rr = (r * r).sum(dim=1)
        tol = max(CG_TOL, 10 * torch.finfo(b.dtype).eps)
        b_norm2 = (b * b).sum(dim=1).clamp_min(torch.finfo(b.dtype).tiny)
        shape = (m, *self.shapes[i + 1])

        def normal(v: torch.Tensor) -> torch.Tensor:
            return self._conv(i, self._conv_adjoint(i, v.reshape(shape))).reshape(m, -1)

        best = rr.clone()
        last_progress = 0
        for it in range(CG_MAX_ITER):
            active = rr > (tol**2) * b_norm2
            if not bool(active.any()):
                break
            improved = rr < 0.98 * best
            if bool((improved & active).any()):
                last_progress = it
            best = torch.minimum(best, rr)
            if it - last_progress > CG_STALL_ITER:
                break  # stagnation: an inconsistent (rank-deficient) system or rounding floor
            q = normal(d)
            dq = (d * q).sum(dim=1)
            alpha = torch.where(active & (dq > 0), rr / torch.where(dq > 0, dq, 1.0), 0.0)
            y += alpha[:, None] * d
            r -= alpha[:, None] * q
            rr_new = (r * r).sum(dim=1)
            beta = torch.where(active, rr_new / rr.clamp_min(torch.finfo(b.dtype).tiny), 0.0)
            d = r + beta[:, None] * d
            rr = rr_new
        x = self._conv_adjoint(i, y.reshape(shape))
        # The true residual of A x = a (CG's recursive one can drift).
        true = (self._conv(i, x).reshape(m, -1) - b).norm(dim=1) / b_norm2.sqrt()
        return x, float(true.max())

    # -- serialization ------------------------------------------------------
    def spec_params(self) -> dict[str, Any]:
        return {
            "image_shape": list(self.image_shape),
            "channels": list(self.channels),
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": list(self.padding),
            "negative_slope": self.negative_slope,
        }

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module signature
        self._solvers = {}
        return super()._apply(fn, recurse)
