"""Data-parallel training under torchrun: one process per device, gradients summed once per step.

torchrun sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; without them the program runs as one process
and nothing here does any work. Every process sees the same optimizer steps (same seed, same batch
order) and trains on its share of each step's examples; the trainable gradients are summed across
processes in one flat all-reduce before the optimizer step, and the loss is divided by the trained
tokens of the whole step, so N processes compute the same update as one process with the same
global batch. Only rank 0 writes logs, checkpoints and the artifact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This process's part of ``items`` (every world_size-th, starting at its rank)."""
        return list(items[self.rank::self.world_size])


def start(device_type: str) -> Ranks:
    """Join the process group when launched by torchrun (NCCL on CUDA, gloo elsewhere)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Ranks()
    import torch.distributed as dist

    ranks = Ranks(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device_type == "cuda":
        torch.cuda.set_device(ranks.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return ranks


def stop(ranks: Ranks) -> None:
    if ranks.world_size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def sum_gradients(params: Sequence[torch.nn.Parameter], ranks: Ranks) -> None:
    """Sum the gradients of ``params`` over all processes (one flat all-reduce)."""
    if ranks.world_size == 1:
        return
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def sync_parameters(params: Sequence[torch.nn.Parameter], ranks: Ranks) -> None:
    """Give every process rank 0's trainable weights (after initialisation or a resume)."""
    if ranks.world_size == 1:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def sum_values(values: Sequence[float], ranks: Ranks, device: torch.device) -> list[float]:
    """Element-wise sum of a few numbers over all processes (e.g. an eval loss and its token count)."""
    if ranks.world_size == 1:
        return list(values)
    import torch.distributed as dist

    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
