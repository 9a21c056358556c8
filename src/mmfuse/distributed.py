"""torch.distributed plumbing for the trainer: one process per device, launched by torchrun.

Nothing changes for a single process. Under `torchrun --nproc_per_node N` (or `--nnodes`), the
environment names this process's rank; the trainer then joins the process group (NCCL on CUDA,
gloo on CPU), wraps the model in DistributedDataParallel, gives each rank its slice of every
epoch's shuffled order, and lets rank 0 alone write checkpoints, logs, reports and the feature
cache, while the other ranks wait at a barrier and then read what it wrote.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> DistInfo:
    """What torchrun put in the environment (rank 0 of 1 when it did not launch us)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return DistInfo(rank, world, local)


def setup(info: DistInfo, device: torch.device) -> torch.device:
    """Join the process group once; on CUDA each local rank takes its own device."""
    if not info.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        # Leaving the group open at exit lets the interpreter tear down gloo's threads while
        # they run, which aborts the process ("terminate called without an active exception").
        atexit.register(_leave)
    return device


def _leave() -> None:
    if not dist.is_initialized():
        return
    # All ranks leave together: a rank whose peer has already closed its sockets can have
    # gloo's I/O thread throw during teardown, which aborts that process.
    with contextlib.suppress(RuntimeError):  # a peer already failed: leave anyway
        dist.barrier()
    dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def sum_across(info: DistInfo, *values: float) -> list[float]:
    """Sum numbers over ranks (e.g. a loss total and a row count)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)  # gloo and NCCL both sum on CPU tensors for gloo; fine for a few numbers
    return t.tolist()


def gather(info: DistInfo, obj):
    """Every rank's `obj`, in rank order (a list of one on a single process)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def rank_slice(order: list[int], info: DistInfo, *, pad: bool) -> list[int]:
    """This rank's share of `order`: every world-th item from its rank.

    With `pad`, the order is first padded (by repeating its start) to a multiple of the world
    size, as DistributedSampler does, so every rank runs the same number of steps and no rank
    waits forever in an all-reduce. Evaluation uses no padding, so no row counts twice.
    """
    if not info.enabled:
        return list(order)
    if pad and len(order) % info.world:
        extra = info.world - len(order) % info.world
        order = list(order) + list(order[:extra])
    return list(order[info.rank :: info.world])


def wrap(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """`model` in DistributedDataParallel under torchrun; itself otherwise."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # An input absent from every row of a batch is not encoded, so its encoder has no gradient
    # that step: DDP must be told to expect unused parameters.
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
