"""Distributed data-parallel plumbing: ``torchrun ... -m vaecli train`` (see docs/distributed.md).

torchrun starts one process per rank and tells each its place through the environment
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``). :func:`init` joins
the process group (gloo on CPU, NCCL on CUDA with one GPU per local rank); every other function
here is a no-op (or the identity) in a plain single process, so the training loop calls them
unconditionally.

The rules the trainer follows under DDP:

* every rank holds the model, wrapped in ``DistributedDataParallel`` for the training forward,
  so gradients are averaged over the *global* batch (per-rank batch x world size);
* each epoch's permutation (derived from (seed, epoch), identical on all ranks) is padded and
  sharded ``perm[rank::world_size]`` exactly as ``DistributedSampler`` does after
  ``set_epoch(epoch)`` (:func:`shard`);
* decisions that depend on time or signals (stop, time budget, periodic save) and the
  non-finite-loss check are agreed by all ranks (:func:`any_true`, :func:`all_finite`): a rank
  leaving the loop alone would leave the others waiting;
* only rank 0 writes files; the others wait at a barrier around saves;
* collectives time out after ``VAE_DIST_TIMEOUT`` seconds (default 600), so a lost rank
  ends the job with an error instead of a hang.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .device import resolve_device
from .errors import ConfigError, DeviceError, DistributedError, VaeError

T = TypeVar("T")
TIMEOUT_ENV = "VAE_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 600.0  # seconds


# ----------------------------------------------------------------------------- who am I


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name, "")
    if raw == "":
        if default is None:
            raise ConfigError(f"{name} is not set: launch distributed training with torchrun (see docs/distributed.md)")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def env_ranks() -> tuple[int, int, int]:
    """``(world_size, rank, local_rank)`` from torchrun's environment; ``(1, 0, 0)`` without it."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return 1, 0, 0
    rank = _env_int("RANK")
    local = _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world or local < 0:
        raise ConfigError(f"inconsistent torchrun environment: RANK={rank}, LOCAL_RANK={local}, WORLD_SIZE={world}")
    return world, rank, local


def launched() -> bool:
    """True when this process is one of several started by torchrun (``WORLD_SIZE`` > 1)."""
    return env_ranks()[0] > 1


def is_distributed() -> bool:
    """True once :func:`init` joined a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (1 in a single process)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's global rank (0 in a single process)."""
    return dist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    """This process's rank on its machine (selects its GPU)."""
    return env_ranks()[2] if is_distributed() else 0


def is_main() -> bool:
    """True on rank 0, the only rank that prints and writes files."""
    return rank() == 0


# ----------------------------------------------------------------------------- setup


def timeout_seconds() -> float:
    """The collective timeout: ``VAE_DIST_TIMEOUT`` seconds, default 600."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    if raw == "":
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{TIMEOUT_ENV} must be a number of seconds > 0, got {raw!r}")
    return value


def device_for(name: str = "auto") -> torch.device:
    """The device this rank trains on: :func:`vaecli.device.resolve_device` in a single process;
    under torchrun ``cuda:LOCAL_RANK`` (auto picks CUDA when present) or the CPU."""
    world, _, local = env_ranks()
    if world <= 1:
        return resolve_device(name)
    if name == "mps":
        raise DeviceError("--device mps cannot be used with torchrun (no distributed backend for MPS): use --device cpu")
    if name.startswith("cuda:"):
        raise ConfigError(f"--device {name}: under torchrun use --device cuda (each rank takes the GPU of its local rank)")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if name not in ("auto", "cuda"):
        return resolve_device(name)  # raises the usual error for unknown names
    if not torch.cuda.is_available():
        raise DeviceError("--device cuda: CUDA is not available on this machine (try --device cpu)")
    count = torch.cuda.device_count()
    if local >= count:
        raise DeviceError(
            f"local rank {local} has no GPU: this machine has {count} (use --nproc-per-node {count} or fewer, or --device cpu)"
        )
    return torch.device("cuda", local)


def init(device: str = "auto") -> None:
    """Join torchrun's process group (gloo for CPU, NCCL for CUDA); a no-op without torchrun.

    Collectives time out after :func:`timeout_seconds`, so a lost rank ends the job."""
    world, rnk, _ = env_ranks()
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return
    if not dist.is_available():
        raise DistributedError("this PyTorch build has no torch.distributed: cannot run under torchrun")
    dev = device_for(device)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    timeout = timeout_seconds()
    kwargs: dict[str, Any] = {}
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        kwargs["device_id"] = dev
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout), **kwargs)
    except (RuntimeError, ValueError, dist.DistError) as exc:
        raise DistributedError(f"rank {rnk} of {world} could not join the process group ({backend}): {_first_line(exc)}") from None


def cleanup() -> None:
    """Leave the process group (call on the success path; a failing rank just exits).

    All ranks meet at a barrier first: a rank that tore down its gloo connections while a peer was
    still finishing its last collective sometimes died in C++ at exit (SIGABRT, "terminate called
    without an active exception") and failed the whole torchrun job."""
    if dist.is_available() and dist.is_initialized():
        barrier()
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` under torchrun; ``model`` itself otherwise.

    DDP broadcasts rank 0's weights at construction and averages gradients in ``backward``;
    BatchNorm running statistics are rank 0's (broadcast at every forward)."""
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


# ----------------------------------------------------------------------------- data sharding


def shard_size(n: int, world: int | None = None) -> int:
    """Images each rank takes per epoch: ``ceil(n / world_size)`` (the permutation is padded)."""
    w = world_size() if world is None else world
    return math.ceil(n / w) if n else 0


def shard(perm: torch.Tensor, world: int | None = None, rnk: int | None = None) -> torch.Tensor:
    """This rank's part of an epoch permutation, as ``DistributedSampler`` (drop_last=False)
    computes it: pad by repeating the start to a multiple of the world size, take ``[rank::world]``.
    Every rank gets the same number of indices; the identity in a single process."""
    w = world_size() if world is None else world
    r = rank() if rnk is None else rnk
    if w <= 1:
        return perm
    total = shard_size(len(perm), w) * w
    if total > len(perm):
        reps = math.ceil((total - len(perm)) / len(perm))
        perm = torch.cat([perm, perm.repeat(reps)[: total - len(perm)]])
    return perm[r:total:w]


# ----------------------------------------------------------------------------- collectives


def _coll_device() -> torch.device:
    """Where collective tensors live: the current GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_true(flag: bool) -> bool:
    """True when ``flag`` is true on any rank (one all-reduce); ``flag`` in a single process."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=_coll_device())
    _call(dist.all_reduce, t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_finite(value: torch.Tensor) -> bool:
    """True when ``value`` is finite on every rank (so all ranks skip or stop together)."""
    if not is_distributed():
        return bool(torch.isfinite(value).all())
    bad = (~torch.isfinite(value.detach())).any().reshape(1).float().to(_coll_device())
    _call(dist.all_reduce, bad, op=dist.ReduceOp.MAX)
    return bool(bad.item() == 0)


def any_flags(flags: list[bool], device_flag: torch.Tensor | None = None) -> list[bool]:
    """Each flag OR-ed over the ranks, in ONE small all-reduce (plus ``device_flag``, a bool
    tensor on the training device, appended last: read without a sync of its own). In a single
    process the flags as given (and the device flag read)."""
    if not is_distributed():
        return [*map(bool, flags), *([bool(device_flag)] if device_flag is not None else [])]
    dev = _coll_device()
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=dev)
    if device_flag is not None:
        t = torch.cat([t, device_flag.detach().reshape(1).float().to(dev)])
    _call(dist.all_reduce, t, op=dist.ReduceOp.MAX)
    return [v > 0 for v in t.tolist()]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (and return it); ``t`` unchanged in a single process."""
    if is_distributed():
        moved = t.to(_coll_device())
        _call(dist.all_reduce, moved, op=dist.ReduceOp.SUM)
        if moved is not t:
            t.copy_(moved)
    return t


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        dev = _coll_device()
        if dev.type == "cuda":
            _call(dist.barrier, device_ids=[dev.index])
        else:
            _call(dist.barrier)


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (a picklable value), in rank order; ``[obj]`` in a single process."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    _call(dist.all_gather_object, out, obj)
    return out


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and hand its result to every rank (it must pickle).

    When ``fn`` raises on rank 0, the other ranks raise the same error, marked ``mirrored``
    so the CLI prints it once (on rank 0)."""
    if not is_distributed():
        return fn()
    box: list[Any] = [None]
    if is_main():
        try:
            box[0] = ("ok", fn())
        except BaseException as exc:
            _call(dist.broadcast_object_list, [("error", _portable(exc))], src=0)
            raise
    _call(dist.broadcast_object_list, box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise _mirror(value)
    return value


def local_main_first(fn: Callable[[], T]) -> T:
    """Run ``fn`` on each machine's local rank 0 first, then on the other ranks (for work
    that fills a shared cache, e.g. a dataset download). A failure on a local rank 0 is
    raised on every rank."""
    if not is_distributed():
        return fn()
    first = local_rank() == 0
    out: Any = None
    failure: BaseException | None = None
    if first:
        try:
            out = fn()
        except BaseException as exc:  # agree before raising, or the others would wait forever
            failure = exc
    failed = any_true(failure is not None)
    if failure is not None:
        raise failure
    if failed:
        raise _mirror(("DistributedError", "another rank failed to load the data (see its message above)"))
    return out if first else fn()


def param_digests(model: torch.nn.Module) -> list[str]:
    """Every rank's :func:`param_digest` of ``model``, in rank order (a DDP sanity check)."""
    return all_gather_object(param_digest(model))


def param_digest(model: torch.nn.Module) -> str:
    """sha256 of the parameters' bytes in ``named_parameters`` order (buffers excluded)."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- errors


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _portable(exc: BaseException) -> tuple[str, str]:
    name = type(exc).__name__ if isinstance(exc, VaeError) else "DistributedError"
    msg = str(exc) if isinstance(exc, VaeError) else f"rank 0 failed: {type(exc).__name__}: {_first_line(exc)}"
    return name, msg


def _mirror(value: tuple[str, str]) -> VaeError:
    from . import errors

    name, msg = value
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, VaeError)):
        cls = DistributedError
    err = cls(msg)
    err.mirrored = True
    return err


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, dist.DistError) as exc:
        raise explain(exc) from None


def explain(exc: BaseException) -> DistributedError:
    """A clear :class:`DistributedError` for a failed collective (a peer died or timed out)."""
    return DistributedError(
        f"rank {rank()} lost contact with the other ranks (one failed, or none answered within "
        f"{TIMEOUT_ENV}={timeout_seconds():g}s): {_first_line(exc)}"
    )


def is_comm_error(exc: BaseException) -> bool:
    """True for errors raised by a collective (e.g. inside DDP's backward) under torchrun."""
    if not is_distributed():
        return False
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(k in text for k in ("gloo", "nccl", "connection closed", "timed out", "timeout"))


__all__ = [
    "env_ranks",
    "launched",
    "is_distributed",
    "world_size",
    "rank",
    "local_rank",
    "is_main",
    "timeout_seconds",
    "device_for",
    "init",
    "cleanup",
    "wrap",
    "shard_size",
    "shard",
    "any_true",
    "all_finite",
    "all_reduce_sum",
    "barrier",
    "all_gather_object",
    "on_main",
    "local_main_first",
    "param_digests",
    "param_digest",
    "explain",
    "is_comm_error",
]
