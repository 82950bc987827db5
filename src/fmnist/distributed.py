"""Distributed set-up from torchrun's environment, returned as a small object (no globals).

Under `torchrun`, RANK / WORLD_SIZE / LOCAL_RANK are set; without them this is one process.
gloo on CPU, NCCL on CUDA. Everything here is a no-op for one process, so the training loop
calls it unconditionally.

Failure model: torchrun (with its default `--max-restarts=0`) stops every worker as soon as one
exits non-zero, so a failed rank never leaves the others waiting. The survivors usually see the
failure first as a broken connection inside a collective; `clear_errors` turns that into one
sentence naming the rank, instead of a second traceback that looks like a second bug. A rank that
hangs without dying is caught by the collective timeout (`FMNIST_DIST_TIMEOUT`, seconds).
"""

from __future__ import annotations

import datetime as _dt
import functools
import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist

from fmnist.errors import ConfigError, FmnistError

if TYPE_CHECKING:
    from fmnist.checkpoint import ResumeState

TIMEOUT_ENV = "FMNIST_DIST_TIMEOUT"


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def label(self) -> str:
        """`rank 1 of 4`: how messages name this process."""
        return f"rank {self.rank} of {self.world_size}"


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise ConfigError(f"Environment variable {name} is not set: launch with torchrun.")
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(
            f"Environment variable {name}={value!r} is not an integer: launch with torchrun, "
            "which sets it."
        ) from None


def from_env() -> DistInfo:
    """Rank, world size and local rank from torchrun's variables (single process if unset)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    info = DistInfo(
        rank=_env_int("RANK"),
        world_size=_env_int("WORLD_SIZE"),
        local_rank=_env_int("LOCAL_RANK", 0),
    )
    if info.world_size < 1 or not 0 <= info.rank < info.world_size:
        raise ConfigError(
            f"RANK={info.rank} and WORLD_SIZE={info.world_size} do not make sense together: "
            "launch with torchrun, which sets both."
        )
    return info


def device_for(info: DistInfo, device: torch.device) -> torch.device:
    """The device this process trains on: under DDP on CUDA, GPU `LOCAL_RANK` (made current).

    Where the launcher already gives each process a single visible GPU (CUDA_VISIBLE_DEVICES
    set per process, as some schedulers do), that GPU is cuda:0 whatever the local rank.
    """
    if device.type != "cuda" or not info.enabled:
        return device
    count = torch.cuda.device_count()
    index = 0 if count == 1 else info.local_rank
    if index >= count:
        raise ConfigError(
            f"{info.label} has LOCAL_RANK {info.local_rank}, but only {count} GPU(s) are visible: "
            f"use torchrun --nproc_per_node={count} (at most one process per GPU)."
        )
    device = torch.device("cuda", index)
    torch.cuda.set_device(device)
    return device


def timeout() -> _dt.timedelta | None:
    """The collective timeout from FMNIST_DIST_TIMEOUT (seconds); None keeps torch's default
    (30 minutes for gloo, 10 for NCCL)."""
    value = os.environ.get(TIMEOUT_ENV)
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise ConfigError(f"{TIMEOUT_ENV}={value!r} must be a positive number of seconds.")
    return _dt.timedelta(seconds=seconds)


def init(info: DistInfo, device: torch.device) -> None:
    """Join the process group (no-op for one process): NCCL for CUDA tensors, gloo otherwise."""
    if not info.enabled or dist.is_initialized():
        return
    kwargs: dict[str, Any] = {"rank": info.rank, "world_size": info.world_size}
    if (t := timeout()) is not None:
        kwargs["timeout"] = t
    if device.type == "cuda":
        # Binding the communicator to this process's GPU up front: no guessing which GPU a
        # barrier should use, and no lazy NCCL set-up in the middle of the first step.
        dist.init_process_group(backend="nccl", device_id=device, **kwargs)
    else:
        dist.init_process_group(backend="gloo", **kwargs)


def shutdown() -> None:
    """Leave the process group. Delete any DDP-wrapped model first, or the process can abort
    at exit (the wrapper's reducer outliving its communicator)."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()  # a deleted DDP wrapper can linger in a reference cycle with its reducer
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum `tensor` over ranks, in place (no-op for one process)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_buffers(model: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each forward, then every rank updates them with its
    own batch: after the last step they differ slightly. Sharded evaluation must use the model
    rank 0 saves, or the reported accuracy is not the checkpoint's.
    """
    if info.enabled:
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def gather_objects(obj: Any, info: DistInfo) -> list[Any] | None:
    """Every rank's `obj`, in rank order, on rank 0 (None elsewhere); `[obj]` for one process."""
    if not info.enabled:
        return [obj]
    out: list[Any] | None = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


# ---- resume ---------------------------------------------------------------------------------


def check_resume(saved: int | None, info: DistInfo, where: object) -> None:
    """A run continues exactly only with the process count it was trained with (`saved`): the
    count sets the global batch, the steps per epoch (so the schedule) and, with
    `lr_scaling=linear`, the lr."""
    if saved is not None and saved != info.world_size:
        how = ("in one process (no torchrun)" if saved == 1
               else f"with torchrun --nproc_per_node/--nnodes giving {saved} processes")
        raise ConfigError(
            f"Run {where} was trained by {saved} process(es), this launch has "
            f"{info.world_size}: resume it {how}, since the process count sets the global batch "
            "and the schedule."
        )


def rank_rng_state(resumed: ResumeState, info: DistInfo) -> dict[str, Any]:
    """This rank's saved RNG states (`rng_ranks`), or rank 0's where only those were saved.

    Data order and augmentation never touch these (they come from (seed, epoch) generators);
    they matter for randomness inside the model, e.g. dropout, which differs per rank.
    """
    per_rank = resumed.rng_ranks
    if per_rank is not None and len(per_rank) == info.world_size:
        return per_rank[info.rank]
    return resumed.rng


# ---- errors ---------------------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])

# What a survivor's collective says when a peer died or hung (gloo, NCCL, the TCP store).
_PEER_SIGNS = ("closed by peer", "reset by peer", "broken pipe", "connection refused",
               "timed out", "timeout", "remote process", "remote worker", "socket")


class PeerError(FmnistError):
    """This rank stopped because another rank of the run failed or stopped answering."""


def is_peer_failure(error: BaseException) -> bool:
    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(s in text for s in _PEER_SIGNS)


def clear_errors(fn: F) -> F:
    """Decorate an entry point that runs under torchrun: name the rank in user errors, and turn
    a peer's failure seen from a survivor into one sentence rather than a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FmnistError as e:
            info = _info_or_single()
            if info.enabled and e.rank is None:
                e.rank = info.rank
                if e.args:
                    e.args = (f"{info.label}: {e.args[0]}", *e.args[1:])
            raise
        except RuntimeError as e:
            info = _info_or_single()
            if not (info.enabled and is_peer_failure(e)):
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            # gloo's "[/path/pair.cc:553] Connection closed by peer [addr]. This is typically
            # caused by...": keep the first sentence without the source location.
            first = first.split("] ", 1)[-1].split(". ", 1)[0].rstrip(".")[:160]
            if "timed out" in first.lower() or "timeout" in first.lower():
                why = (f"a collective timed out ({first}): another rank is stuck or gone; "
                       f"raise {TIMEOUT_ENV} (seconds) if it was only slow")
            else:
                why = (f"another rank of this run failed ({first}); its own error is printed "
                       "above or in torchrun's summary")
            error = PeerError(f"{info.label} stopped: {why}.")
            error.rank = info.rank
            raise error from e

    return wrapper  # type: ignore[return-value]


def _info_or_single() -> DistInfo:
    try:
        return from_env()
    except ConfigError:
        return DistInfo()
