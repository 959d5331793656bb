"""Device and precision selection."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from .errors import DeviceError

if TYPE_CHECKING:  # pragma: no cover
    pass


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; asking for an absent device is an error."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if has_mps else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda: CUDA is not available on this machine (try --device cpu)")
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise DeviceError(f"unknown device {name!r} (use cuda or cuda:N)") from None
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceError(
                f"--device {name}: this machine has {count} CUDA device{'s' if count != 1 else ''} (cuda:0..cuda:{count - 1})"
            )
        return dev
    if name == "mps":
        if not has_mps:
            raise DeviceError("--device mps: Apple MPS is not available on this machine (try --device cpu)")
        return torch.device("mps")
    raise DeviceError(f"unknown device {name!r} (choose auto, cpu, cuda or mps)")


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX-512-BF16 or AMX)."""
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - very old torch
        return False
    if cap in ("AVX512_BF16", "AMX"):
        return True
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            flags = fh.read(200_000)
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def native_bf16(device: torch.device) -> bool:
    """True when ``device`` runs bf16 natively (AVX-512-BF16/AMX CPUs; CUDA GPUs from Ampere on)."""
    if device.type == "cpu":
        return cpu_has_bf16()
    if device.type == "cuda":
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # pragma: no cover - torch < 2.3
            return bool(torch.cuda.is_bf16_supported())
    return False


def bf16_warning(precision: str, device: torch.device) -> str | None:
    """A one-line warning when bf16 would be emulated (a CPU without AVX-512-BF16 or AMX, a GPU
    older than Ampere), else None."""
    if precision != "bf16" or device.type not in ("cpu", "cuda") or native_bf16(device):
        return None
    if device.type == "cpu":
        return "this CPU has no native bf16 (AVX-512-BF16/AMX): bf16 is emulated and about 10x slower than fp32"
    return f"{torch.cuda.get_device_name(device)} has no native bf16 (needs compute capability 8.0+): bf16 is emulated and slower than fp32"


def accumulator_dtype(device: torch.device | str) -> torch.dtype:
    """dtype of on-device running sums: float64, except on MPS, which has no float64 (float32)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def configure_cuda(device: torch.device) -> dict[str, bool]:
    """The CUDA runtime policy, set once per run and recorded in summary.json (``runtime``):
    cuDNN autotuning on (fixed shapes: every step after the first reuses the fastest kernels) and
    TF32 on for matmuls and convolutions (10-bit mantissa inputs, fp32 accumulation: about 3x the
    fp32 matmul rate on Ampere and later; its effect on test -ELBO is what scripts/gpu_check.sh
    measures as fp32 vs bf16). Returns the policy; {} off CUDA."""
    if device.type != "cuda":
        return {}
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return {"cudnn_benchmark": True, "tf32_matmul": True, "tf32_cudnn": True}


def memory_format_for(model: torch.nn.Module, device: torch.device) -> torch.memory_format:
    """``channels_last`` for conv models on CPU/CUDA (oneDNN/cuDNN run NHWC convs without
    reordering; measured 5-10% faster per step on CPU, docs/performance.md), else contiguous."""
    has_conv = any(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) for m in model.modules())
    if has_conv and device.type in ("cpu", "cuda"):
        return torch.channels_last
    return torch.contiguous_format


def adam_kwargs(device: torch.device) -> dict[str, Any]:
    """Fused Adam on CPU and CUDA (one kernel over all parameters), foreach elsewhere."""
    return {"fused": True} if device.type in ("cpu", "cuda") else {"foreach": True}


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """bf16 autocast for the forward pass when ``precision == 'bf16'`` (fp32 master weights)."""
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield
