"""Devices, mixed precision and memory format: one place for the run-time switches."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import torch

from common.core.user_errors import UsageError

AMP_MODES = ("off", "fp16", "bf16")
# Training may also say ``auto``: bf16 where this machine runs it faster than fp32.
TRAIN_AMP_MODES = (*AMP_MODES, "auto")
# bf16 matrix products must run at least this many times the fp32 rate for ``auto`` to
# pick bf16 on a CPU (AMX: about 5×; AVX-512 BF16 without AMX: from below 1× to about 2×,
# by CPU; AVX2: far below 1×, emulated).
BF16_MIN_GAIN = 1.3


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


def full_fp32_on_cuda(device: torch.device) -> None:
    """Make fp32 mean fp32 on a GPU (for the whole process; nothing on a CPU): PyTorch
    lets cuDNN round convolution inputs to TF32 (10-bit mantissa) by default. On an H200
    that moved MVSS-Net's fp32 maps by up to 20/255 from the CPU's fp32 (4.8/255 from the
    release's own code run the same way); with TF32 off, 0.018 and 0.013/255."""
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


@contextlib.contextmanager
def exact_fp32(device: torch.device) -> Iterator[None]:
    """:func:`full_fp32_on_cuda` for a block only, the flags restored after: fp32 training
    keeps PyTorch's TF32 for its speed, but its validation chooses the thresholds that
    inference (which turns TF32 off) then applies, so it must see the same maps."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    full_fp32_on_cuda(device)
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


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


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 / AMX); elsewhere bf16 is
    emulated and slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_matmul_gain(n: int = 1024, reps: int = 4) -> float:
    """This CPU's bf16 matrix-product rate over its fp32 rate (best of ``reps``)."""
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # warm-up: kernels built
        best = float("inf")
        for _ in range(reps):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        rates[dtype] = 1.0 / best
    return rates[torch.bfloat16] / rates[torch.float32]


def resolve_amp(amp: str, device: torch.device) -> tuple[str, str]:
    """``auto`` → the mixed precision that pays on ``device`` (with the reason, for the
    log); any other mode as it is. CUDA: bf16 where supported, else fp16. CPU: bf16 where
    its bf16 matrix products measure ≥ ``BF16_MIN_GAIN`` × fp32, else off (fp32): decided
    from what the CPU does, not from its name."""
    if amp != "auto":
        return amp, "as configured"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16", "this GPU supports bf16"
        return "fp16", "this GPU has no bf16"
    gain = bf16_matmul_gain()
    choice = "bf16" if gain >= BF16_MIN_GAIN else "off"
    return choice, f"bf16 matrix products measured {gain:.2f}× fp32 on this CPU"
