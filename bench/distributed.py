"""torchrun support: ranks shard the batches of a run deterministically.

Under ``torchrun --nproc-per-node=N -m salbench run ...`` every rank processes the batches
``b`` with ``b % world_size == rank`` and writes its own part files (named by batch, so ranks
never collide and a 1-rank run writes the very same files). Rank 0 picks the run directory and
writes ``run.json``; ``salbench run`` writes the report on rank 0 once the run has returned. gloo on CPU, NCCL on GPUs.
Every rank loads the run's plugins itself (they are part of the spec, which each rank reads) and
the ranks check that they resolved the same spec hash, which covers the plugins' file hashes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, unit: int) -> bool:
        return unit % self.world_size == self.rank


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a single process (from the environment torchrun sets)."""
    return int(os.environ.get("RANK", "0")) == 0


def init_from_env(device_type: str) -> Shard:
    """Join the process group torchrun describes in the environment; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Shard()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return Shard(rank, world, local)


def broadcast(obj: Any, shard: Shard) -> Any:
    """Rank 0's value of ``obj`` on every rank."""
    if shard.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_equal(value: Any, shard: Shard) -> bool:
    """Whether every rank holds the same ``value`` (every rank gets the same answer)."""
    if shard.world_size == 1:
        return True
    values: list[Any] = [None] * shard.world_size
    dist.all_gather_object(values, value)
    return all(v == values[0] for v in values)


def barrier(shard: Shard) -> None:
    if shard.world_size > 1:
        dist.barrier()


def shutdown(shard: Shard) -> None:
    if shard.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
