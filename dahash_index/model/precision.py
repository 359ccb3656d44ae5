"""The arithmetic the backbone runs in: a measured choice, recorded with every shard.

- ``fp32``: IEEE float32 everywhere (cuDNN's TF32 convolutions switched off).
- ``tf32``: float32 tensors, convolutions whose inputs and weights are rounded to TF32
  (10-bit mantissa), float32 accumulation: the GPU's tensor cores. A CPU has no TF32: there it
  is emulated (operands rounded, then an fp32 convolution), slower than fp32, to measure
  agreement without a GPU.
- ``bf16``: convolutions and matrix products in bfloat16 under ``torch.autocast``, float32
  accumulation (real bf16 on a CPU too, slow without native bf16 instructions).
The resize, the normalisation and the hash network always stay float32.

On a CPU the default is ``fp32`` (codes exactly as every earlier CPU build made them). On a
GPU it is ``GPU_DEFAULT``, chosen because its codes agree with fp32 within the project's
tolerance (at most 0.1 % of bits, UC Merced mAP@all within 0.002) where bf16's do not:
``benchmarks/precision_agreement.py`` measures both, the README gives the figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from dahash_index.registry import Registry

PRECISIONS: Registry[None] = Registry("precision")
PRECISIONS.add("fp32", None, "float32 throughout (the CPU's default)")
PRECISIONS.add("tf32", None, "convolution operands rounded to a 10-bit mantissa, float32 "
               "accumulation (the GPU's default; emulated on a CPU)")
PRECISIONS.add("bf16", None, "bfloat16 autocast (fastest on a GPU; its codes move more)")
GPU_DEFAULT = "tf32"


def default_precision(device: torch.device) -> str:
    """``fp32`` on a CPU, ``GPU_DEFAULT`` on a GPU."""
    return GPU_DEFAULT if device.type == "cuda" else "fp32"


def check_precision(precision: str) -> str:
    return PRECISIONS.check(precision)


@contextmanager
def precision_scope(device: torch.device, precision: str) -> Iterator[None]:
    """Run the backbone's forward in ``precision`` on ``device``.

    cuDNN's TF32 switch is process-wide: it is set for the scope and restored after it, so
    two threads running different precisions at once would see each other's setting (the
    encoders of one process share one precision in practice). Through the one API that
    newer torch versions accept (``fp32_precision``; mixing it with ``allow_tf32`` raises).
    """
    check_precision(precision)
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
        return
    if device.type != "cuda":
        with EmulatedTF32() if precision == "tf32" else nullcontext():
            yield
        return
    conv = torch.backends.cudnn.conv
    saved = conv.fp32_precision, torch.backends.cudnn.benchmark
    conv.fp32_precision = "tf32" if precision == "tf32" else "ieee"
    torch.backends.cudnn.benchmark = True  # batches have one shape: the fastest kernel, once
    try:
        yield
    finally:
        conv.fp32_precision, torch.backends.cudnn.benchmark = saved


def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 -> float32 values with a 10-bit mantissa (TF32), rounded to nearest, ties to
    even: the low 13 bits of the IEEE pattern cleared after adding half of them."""
    bits = x.view(torch.int32)  # same element size: any strides (channels last stays)
    rounded = (bits + (0x0FFF + ((bits >> 13) & 1))) & -0x2000
    return rounded.view(torch.float32)


class EmulatedTF32(TorchFunctionMode):
    """Within it, ``conv2d`` and ``linear`` see their input and weight rounded to TF32."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (F.conv2d, torch.conv2d, F.linear) and args[0].dtype == torch.float32:
            args = (round_to_tf32(args[0]), round_to_tf32(args[1]), *args[2:])
        return func(*args, **kwargs)
