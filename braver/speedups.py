"""CPU speed-ups, opt-in and in one place: the models themselves stay plain PyTorch.

Neither changes a value beyond float rounding, and neither touches the model: both are
``TorchFunctionMode`` contexts that re-route some ``conv2d`` calls while they are active.

- ``TrainingConvolutions`` (training): wide valid convolutions (kernels of 7 and more: the
  first layers' 7×7 and 13×13, the 21×21 output layer in dense mode) get a backward written
  as forward convolutions (``ConvBackwardByConvolutions``). On the CPU (oneDNN) the weight
  gradient of the wide first layers took 2–4× their forward and the whole backward of the
  output layer about 20×; as forward convolutions they cost 1–2× the forward.
  ``CpuSpeedups`` is the fastai callback that holds it active during a fit on the CPU
  (``braver_learner(..., cpu_speedups=True)``, the default).
- ``SpectralConvolutions`` (inference): the thin, wide output layer of a dense slice as a
  product of FFTs (``braver.inference.predict_volume`` uses it on the CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from scipy.fft import next_fast_len
from torch.overrides import TorchFunctionMode

#: kernels at least this wide take the convolution-only backward
WIDE_KERNEL = 7


class ConvBackwardByConvolutions(torch.autograd.Function):
    """A valid, stride-1 convolution whose backward is written as forward convolutions.

    Same values as ``F.conv2d``'s own backward up to float rounding.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            kh, kw = weight.shape[-2:]
            padded = F.pad(grad, (kw - 1, kw - 1, kh - 1, kh - 1))
            grad_x = F.conv2d(padded, weight.flip(-1, -2).transpose(0, 1))
        if ctx.needs_input_grad[1]:
            # the batch plays the channels: correlate every input map with every output grad
            grad_weight = F.conv2d(x.transpose(0, 1), grad.transpose(0, 1)).transpose(0, 1)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias


def _plain_geometry(stride=1, padding=0, dilation=1, groups=1) -> bool:
    def ones(v, value):
        return all(e == value for e in (v if isinstance(v, (tuple, list)) else (v,)))

    return groups == 1 and ones(stride, 1) and ones(padding, 0) and ones(dilation, 1)


class TrainingConvolutions(TorchFunctionMode):
    """Within this context, wide valid CPU convolutions that need a gradient use
    ``ConvBackwardByConvolutions``; every other call passes through unchanged."""

    def __init__(self, wide: int = WIDE_KERNEL):
        super().__init__()
        self.wide = wide

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.conv2d and not kwargs and self._qualifies(*args):
            return ConvBackwardByConvolutions.apply(*args[:3])
        return func(*args, **kwargs)

    def _qualifies(self, x, weight, bias=None, *geometry) -> bool:
        if not torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32:
            return False
        if x.dim() != 4 or weight.dim() != 4 or not _plain_geometry(*geometry):
            return False
        if not (weight.requires_grad or x.requires_grad):
            return False
        kh, kw = weight.shape[-2:]
        return min(kh, kw) >= self.wide and (x.shape[-2] > kh or x.shape[-1] > kw)


class CpuSpeedups(Callback):
    """Keeps ``TrainingConvolutions`` active during a fit on the CPU (nothing on CUDA)."""

    order = -50

    def before_fit(self):
        self.mode = None
        device = next(self.learn.model.parameters()).device
        if device.type == "cpu":
            self.mode = TrainingConvolutions()
            self.mode.__enter__()

    def after_fit(self):
        if self.mode is not None:
            self.mode.__exit__(None, None, None)
            self.mode = None


class SpectralConvolutions(TorchFunctionMode):
    """Within this context, wide and thin valid convolutions run as products of FFTs (CPU).

    A convolution qualifies when autograd is off, it is stride 1, unpadded, undilated, ungrouped,
    on float32 CPU tensors, its kernel is at least ``min_kernel`` wide, it has at most
    ``max_out_channels`` outputs (fewer than its inputs), and its output is larger than one
    pixel: the paper's output layer in dense mode. Every other call passes through unchanged.
    ``fft_shape`` (rows, columns) is the transform size to use when the input fits in it, so
    that each weight is transformed once per volume (the transforms are cached per weight).
    """

    def __init__(
        self,
        fft_shape: tuple[int, int] | None = None,
        *,
        min_kernel: int = 9,
        max_out_channels: int = 16,
    ):
        super().__init__()
        self.fft_shape = fft_shape
        self.min_kernel = min_kernel
        self.max_out_channels = max_out_channels
        self._weights: dict[tuple, torch.Tensor] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.conv2d and not kwargs and self._qualifies(*args):
            return self._convolve(*args[:3])
        return func(*args, **kwargs)

    def _qualifies(self, x, weight, bias=None, *geometry) -> bool:
        if torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32:
            return False
        if x.dim() != 4 or weight.dim() != 4 or not _plain_geometry(*geometry):
            return False
        out_channels, in_channels, kh, kw = weight.shape
        return (
            min(kh, kw) >= self.min_kernel
            and out_channels <= self.max_out_channels
            and out_channels < in_channels
            and (x.shape[-2] > kh or x.shape[-1] > kw)
        )

    def _transform_size(self, height: int, width: int) -> tuple[int, int]:
        if self.fft_shape and height <= self.fft_shape[0] and width <= self.fft_shape[1]:
            height, width = self.fft_shape
        return next_fast_len(height), next_fast_len(width, real=True)

    def _convolve(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        height, width = x.shape[-2:]
        kh, kw = weight.shape[-2:]
        size = self._transform_size(height, width)
        key = (id(weight), weight._version, size)
        if key not in self._weights:
            self._weights[key] = torch.fft.rfft2(weight.detach(), s=size)
        spectrum = torch.fft.rfft2(x, s=size)  # (B, Cin, H', W'/2+1)
        kernel = self._weights[key]  # (Cout, Cin, H', W'/2+1)
        # cross-correlation: sum over input maps of X · conj(W); vecdot conjugates its first
        product = torch.stack(
            [torch.linalg.vecdot(kernel[o], spectrum, dim=1) for o in range(kernel.shape[0])], 1
        )
        out = torch.fft.irfft2(product, s=size)[..., : height - kh + 1, : width - kw + 1]
        if bias is not None:
            out = out + bias[:, None, None]
        return out.contiguous()
