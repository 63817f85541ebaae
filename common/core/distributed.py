"""torch.distributed helpers: the same code runs under torchrun (DDP) or as one process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from common.core.user_errors import UsageError


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


_owns_group = False  # whether init_from_env started the process group (and may end it)


def launched_processes() -> int:
    """How many processes torchrun (or another launcher) started for this job."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))
    except ValueError:
        return 1


def refuse_several_processes(script: str, hint: str = "run it without torchrun") -> None:
    """For scripts that run as one process (inference, the web app, the data generator,
    which has its own workers): launched by torchrun with several, each would do all the
    work and write the same files at once. One line, before any work (printed by rank 0
    only, like every user error)."""
    count = launched_processes()
    if count > 1:
        raise UsageError(
            f"{script} runs as one process (under torchrun, each of the {count} processes "
            "would do all the work and write the same files)",
            f"WORLD_SIZE={count}",
            hint,
        )


SHARE_A_TEST_SET = (
    "run it without torchrun (one process uses every core, or one GPU); to share a test set "
    "out over processes: torchrun ... benchmark.py --sets NAME=LIST"
)


def init_from_env(device_name: str) -> torch.device:
    """Start the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on CUDA,
    gloo on CPU. A group the caller already started is used as it is. Returns this
    process's device."""
    global _owns_group
    from common.core.runtime import resolve_device

    device = resolve_device(device_name)
    if launched_processes() > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        _owns_group = True
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    return device


def shutdown() -> None:
    """End the process group if :func:`init_from_env` started it (a caller's group stays,
    for the caller to use again)."""
    global _owns_group
    if _owns_group and dist.is_initialized():
        dist.destroy_process_group()
    _owns_group = False


def any_true(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank (keeps ranks in step)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def sum_int(value: int, device: torch.device) -> int:
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.long, device=device)
    dist.all_reduce(t)
    return int(t.item())


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (e.g. BatchNorm running statistics) to every rank."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=src)


def require_every_gradient(named_params: list[tuple[str, torch.nn.Parameter]]) -> None:
    """Every trainable parameter must have a gradient after a step's first backward:
    under DDP one that has none on some process puts the gradient reductions out of
    step, which gloo reports as a size mismatch and NCCL as a hang. Fail clearly instead
    (also in one-process runs, so the fault shows before a multi-GPU job)."""
    missing = [name for name, p in named_params if p.grad is None]
    if missing:
        shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
        raise RuntimeError(
            f"{len(missing)} trainable parameters got no gradient in this step "
            f"({shown}): the loss must reach every parameter in every step (DDP "
            "requires it), or set ddp_find_unused_parameters: true"
        )


def average_gradients(named_params: list[tuple[str, torch.nn.Parameter]]) -> None:
    """All-reduce (mean) every gradient, as DDP's synchronising backward would. Every
    parameter takes part on every process (a zero gradient where one has none, as with
    ``ddp_find_unused_parameters``), so the processes reduce the same list of tensors."""
    if world_size() == 1:
        return
    for _, p in named_params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.SUM)
        p.grad.div_(world_size())


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's object, in rank order (one-element list without DDP)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def whole_batch_shard(length: int, batch_size: int) -> list[int]:
    """This rank's indices when ``length`` items are shared out as whole batches: the
    batches one process would form (``[0, B)``, ``[B, 2B)``, …), batch ``k`` to rank
    ``k mod W``. CPU (and GPU) kernels may round differently for another batch, so each
    item is computed in the same batch as in a single process, bit for bit."""
    size = max(1, batch_size)
    starts = range(rank() * size, length, world_size() * size)
    return [i for start in starts for i in range(start, min(start + size, length))]


class ShardSampler(Sampler[int]):
    """Evaluation sampler: rank r takes indices r, r + W, r + 2W, … — every sample exactly
    once across ranks, no padding or dropped tail (unlike DistributedSampler)."""

    def __init__(
        self, length: int, num_replicas: int | None = None, rank_: int | None = None
    ) -> None:
        self.length = length
        self.num_replicas = num_replicas or world_size()
        self.rank = rank() if rank_ is None else rank_

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.num_replicas))
