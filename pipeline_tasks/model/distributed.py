"""Several training processes under torchrun: rank, process group, gradient averaging."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def launched_by_torchrun() -> bool:
    """torchrun (torch.distributed.run) sets these for every process it starts, even with one."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def process_rank() -> int:
    """This process's rank under torchrun; 0 when run alone."""
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


@contextmanager
def process_group(device: str) -> Iterator[tuple[int, int]]:
    """(rank, world size). Under torchrun: joins the process group (NCCL on CUDA, gloo on CPU) and
    pins this process to its local GPU; alone: (0, 1) and nothing to set up."""
    import torch.distributed as dist

    if not launched_by_torchrun():
        yield 0, 1
        return
    if device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    owner = not dist.is_initialized()
    if owner:
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        if owner:
            dist.destroy_process_group()


def average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """What DDP does after backward, in one flat all-reduce.

    The loss reads the towers' submodules directly (cached text table, sampled candidates), not
    one forward() that DistributedDataParallel could hook, so the averaging is explicit. A
    parameter without a gradient on this rank contributes zeros, so every rank reduces the same
    tensors in the same order.
    """
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for param, grad in zip(params, grads):
        param.grad = flat[offset : offset + grad.numel()].view_as(grad)
        offset += grad.numel()
