"""Device choice and memory probing: CUDA, Apple MPS or CPU, never a silent fallback."""

from __future__ import annotations

import os
import shutil
import warnings
from contextlib import nullcontext
from typing import Any

import torch

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


class DeviceError(RuntimeError):
    """The requested device cannot be used; the message says why and what to do."""


def nvidia_gpu_present() -> bool:
    """True when the machine seems to have an NVIDIA GPU, whatever torch can see."""
    return shutil.which("nvidia-smi") is not None or os.path.exists("/proc/driver/nvidia/version")


def cpu_only_torch_warning() -> str | None:
    """A message when an NVIDIA GPU is present but this torch cannot use it."""
    if torch.cuda.is_available() or not nvidia_gpu_present():
        return None
    build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
    return (
        f"an NVIDIA GPU is present but PyTorch {torch.__version__} ({build}) cannot use it; "
        "install a CUDA build of PyTorch (see pytorch.org) to run on the GPU"
    )


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Turn ``None``/``"auto"``/a name into a usable :class:`torch.device`.

    ``auto`` picks CUDA, then MPS, then CPU, and warns when a GPU is present but this
    PyTorch cannot use it. An explicit ``"cuda"``/``"mps"`` that is not available raises
    :class:`DeviceError` instead of quietly running on the CPU.
    """
    if isinstance(device, torch.device):
        name = device.type
    else:
        name = (device or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        msg = cpu_only_torch_warning()
        if msg:
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            hint = cpu_only_torch_warning() or "no CUDA GPU is visible to PyTorch"
            raise DeviceError(f"device 'cuda' requested but {hint}")
        return torch.device(device if isinstance(device, torch.device) else name)
    if name == "mps":
        if not mps_available():
            raise DeviceError("device 'mps' requested but Apple MPS is not available in this PyTorch")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise DeviceError(f"unknown device {device!r}; choose one of {', '.join(DEVICE_CHOICES)}")


def describe_device(device: torch.device, bf16: bool = True) -> str:
    """A short human description, e.g. 'cuda:0 (NVIDIA A100, 80 GB)' or 'cpu (8 threads)'.
    ``bf16``: whether the computation would use bfloat16 on a CPU that has it (3D networks
    run in float32)."""
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        return f"cuda:{idx} ({props.name}, {props.total_memory / 2**30:.0f} GB)"
    if device.type == "mps":
        return "mps (Apple GPU)"
    extra = ", bfloat16" if bf16 and cpu_supports_bf16() else ""
    n = torch.get_num_threads()
    return f"cpu ({n} thread{'s' if n != 1 else ''}{extra})"


def available_memory(device: torch.device) -> int:
    """Bytes that a computation on ``device`` may reasonably use now."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "mps":
        try:
            return int(torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory())
        except AttributeError:  # older torch
            return 4 * 2**30
    return _host_available_memory()


def _host_available_memory() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return 4 * 2**30


_BF16: bool | None = None


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bfloat16 matrix units (AVX512-BF16 or AMX)."""
    global _BF16
    if _BF16 is None:
        flags = ""
        try:
            with open("/proc/cpuinfo") as fh:
                for line in fh:
                    if line.startswith("flags"):
                        flags = line
                        break
        except OSError:
            pass
        _BF16 = ("avx512_bf16" in flags) or ("amx_bf16" in flags)
    return _BF16


def autocast(device: torch.device, enabled: bool = True) -> Any:
    """Mixed precision context: float16 on CUDA, bfloat16 on a CPU that supports it."""
    if not enabled:
        return nullcontext()
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an out-of-memory error from any backend."""
    if isinstance(exc, getattr(torch, "OutOfMemoryError", ())) or isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
