"""Distributed data parallel helpers (torchrun).

`torchrun --nproc_per_node N -m avserve.cli train ...` (or `torchrun ... $(which avserve) train`)
sets RANK / WORLD_SIZE / LOCAL_RANK; `init_distributed()` then starts a process group: NCCL when
CUDA is used, gloo on the CPU. Without those variables everything runs in one process and the
helpers below degrade to no-ops. Only rank 0 writes files and shows progress.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda requested but CUDA is not available")
        if preference == "cuda":
            return torch.device("cuda", local_rank)
    return torch.device(preference)


def init_distributed(device: str = "auto") -> DistInfo:
    """Starts the process group if launched by torchrun (idempotent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (a list of one element when not distributed)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Averages scalar logs over ranks (for logging only). Ranks may log different keys (a
    head's loss is only there when the rank's clips reached that head): a key is averaged over
    the ranks that have it. Every rank must call this, whatever it holds."""
    if not is_distributed():
        return values
    every = all_gather_objects({k: float(v) for k, v in values.items()})
    keys = sorted(set().union(*every))
    return {k: sum(rank[k] for rank in every if k in rank) / sum(k in rank for rank in every) for k in keys}


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
