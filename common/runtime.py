"""Devices, mixed precision and memory format: one place for the run-time switches."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from common.usage import UsageError

AMP_MODES = ("off", "fp16", "bf16")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but no CUDA device is available")
    return device


def device_of(name: str, amp: str) -> torch.device:
    """The device an option names, checked with the mixed precision it will run: a
    device that is not there, or fp16 on the CPU, is a user error."""
    try:
        device = resolve_device(name)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(str(exc).split("\n")[0], f"--device {name}") from exc
    if device.type == "cpu" and amp == "fp16":
        raise UsageError("fp16 mixed precision is for CUDA", "--amp fp16", "use --amp bf16 on CPU")
    return device


def amp_dtype(amp: str) -> torch.dtype | None:
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    return {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}[amp]


@contextlib.contextmanager
def autocast(device: torch.device, amp: str) -> Iterator[None]:
    """torch.amp autocast for ``fp16``/``bf16``; a no-op for ``off``. fp16 on CPU is
    refused (slow and poorly supported there): use bf16."""
    dtype = amp_dtype(amp)
    if dtype is None:
        yield
        return
    if device.type == "cpu" and dtype == torch.float16:
        raise ValueError("--amp fp16 is for CUDA; use --amp bf16 on CPU")
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def to_memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


# CPU features that decide which oneDNN kernels run (bf16/int8 matrix units, dot-product
# instructions), read from the CPU's own flags: capabilities, never the model name.
_KERNEL_FLAGS = (
    "amx_int8",
    "amx_bf16",
    "avx512_bf16",
    "avx512_vnni",
    "avx_vnni",
    "avx512f",
    "avx2",
)


def cpu_kernel_signature() -> str:
    """What this CPU offers the kernels, as one comparable string (e.g.
    ``aten=AVX512 onednn_cap=- amx_int8 amx_bf16 avx512_bf16 …``): measurements that depend
    on the kernels (the int8 path's speed) are kept per signature. The caps set by
    ``ONEDNN_MAX_CPU_ISA`` / ``ATEN_CPU_CAPABILITY`` are part of it."""
    flags: set[str] = set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", errors="replace") as info:
        for line in info:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    present = [f for f in _KERNEL_FLAGS if f in flags]
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "-"
    aten = torch.backends.cpu.get_cpu_capability()
    return " ".join([f"aten={aten}", f"onednn_cap={cap}", *present])
