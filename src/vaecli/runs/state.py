"""Where a run is: the resume point (:class:`TrainState`), saved with the optimizer and weights in
``train_state.safetensors`` by :mod:`vaecli.runs.store`, and the epoch arithmetic it rests on.

Everything a continuation needs that is not a tensor lives here: the position (epoch, step), the
clocks, the running sums of the epoch, the best validation -ELBO so far, the learning-rate scale
left by recoveries from non-finite steps, and the one-line notices already given.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from .. import distributed
from ..errors import CheckpointError


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffling order of ``epoch``: derived from (seed, epoch), so resuming needs no state."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches per epoch; a last batch of a single image is dropped (BatchNorm needs two)."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= 2 else 0)


def rank_steps_per_epoch(n: int, batch_size: int, world: int) -> int:
    """Steps per epoch of each rank when ``n`` images are sharded over ``world`` ranks (the
    permutation padded to a multiple of ``world``, as ``DistributedSampler`` does)."""
    m = math.ceil(n / world) if n else 0
    return steps_per_epoch(m, min(batch_size, m)) if m else 0


@dataclass
class TrainState:
    """The resume point of a run (JSON in the training state's metadata)."""

    epoch: int = 0  # completed epochs
    step: int = 0  # completed steps in the current epoch
    global_step: int = 0
    train_seconds: float = 0.0  # training time of all invocations (evaluation and checkpoints excluded)
    nonfinite_skipped: int = 0  # batches skipped by --skip-nonfinite
    epoch_sums: list[float] = field(default_factory=lambda: [0.0] * 4)  # neg_elbo, recon, kl, images of the epoch so far
    world_size: int = 1  # ranks that wrote this state
    noise_device: str = "cpu"  # the device type of the noise generator's saved state
    best: dict[str, Any] | None = None  # the best validation evaluation so far: {"epoch": epochs done, "val": {neg_elbo, ...}}
    evals_since_best: int = 0  # validation evaluations since the best one (--early-stop)
    lr_scale: float = 1.0  # halved by every recovery from a non-finite step
    recoveries: list[dict[str, Any]] = field(default_factory=list)  # {"step", "epoch", "lr_before", "lr_after"}
    notices: list[dict[str, Any]] = field(default_factory=list)  # alarms given: {"kind", "epoch", "message"}

    def to_json(self) -> dict[str, Any]:
        """The state as plain JSON."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "training state") -> TrainState:
        """Read a state written by :meth:`to_json`; a damaged one is a :class:`CheckpointError`."""
        try:
            known = {f.name for f in fields(cls)}
            state = cls(**{k: v for k, v in data.items() if k in known})
            state.epoch, state.step, state.global_step = int(state.epoch), int(state.step), int(state.global_step)
            state.epoch_sums = [float(v) for v in state.epoch_sums]
            if len(state.epoch_sums) != 4:
                raise ValueError("epoch_sums")
            if state.best is not None and not isinstance(state.best.get("val", {}).get("neg_elbo"), (int, float)):
                raise ValueError("best")
        except (AttributeError, TypeError, ValueError):
            raise CheckpointError(f"{where}: damaged training state") from None
        return state

    def for_world_size(self, world: int, n: int, batch_size: int) -> None:
        """Keep the place of a run resumed with another world size (DDP) as a fraction of the epoch
        (steps per epoch scale with 1 / world size); ``global_step`` is recounted in the new steps so
        the learning-rate schedule continues smoothly. Exact at epoch boundaries."""
        if self.world_size == world:
            return
        old, new = rank_steps_per_epoch(n, batch_size, self.world_size), rank_steps_per_epoch(n, batch_size, world)
        if old > 0 and new > 0:
            self.step = min(self.step * new // old, new - 1) if self.step else 0
            self.global_step = self.epoch * new + self.step
        self.world_size = world

    @property
    def best_neg_elbo(self) -> float | None:
        """The best validation -ELBO so far (None: no evaluation yet)."""
        return None if self.best is None else float(self.best["val"]["neg_elbo"])

    @property
    def best_epoch(self) -> float | None:
        """Epochs done at the best validation -ELBO."""
        return None if self.best is None else float(self.best["epoch"])

    def progress(self, steps_in_epoch: int) -> float:
        """Epochs done, with the fraction of the current one."""
        return self.epoch + self.step / max(1, steps_in_epoch)


class EpochSums:
    """The running sums of the epoch (-ELBO, reconstruction, KL, images), added on the device each
    step with no host sync, folded into ``TrainState.epoch_sums`` (one sync) when they are read."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.acc = torch.zeros(4, dtype=dtype, device=device)

    def add(self, neg_elbo: torch.Tensor, recon: torch.Tensor, kl: torch.Tensor, images: int) -> None:
        """Add one step's batch means, weighted by its ``images``."""
        self.acc.add_(torch.stack((neg_elbo * images, recon * images, kl * images, neg_elbo.new_tensor(float(images)))).detach())

    def fold(self, state: TrainState, reduce: Any = None) -> None:
        """Move the sums into ``state.epoch_sums`` (``reduce``: e.g. DDP's all-reduce over the ranks)."""
        acc = (reduce(self.acc) if reduce is not None else self.acc).cpu().double().tolist()
        state.epoch_sums = [a + b for a, b in zip(state.epoch_sums, acc)]
        self.acc.zero_()

    def means(self, state: TrainState, reduce: Any = None) -> dict[str, float]:
        """The epoch's running means so far (nats/image)."""
        self.fold(state, reduce)
        *sums, count = state.epoch_sums
        return dict(zip(("neg_elbo", "recon", "kl"), (v / max(count, 1.0) for v in sums)))


def rng_states(noise: torch.Generator) -> dict[str, torch.Tensor]:
    """The RNG states a checkpoint keeps: torch's, the noise generator's and CUDA's on a GPU."""
    rng = {"cpu": torch.get_rng_state(), "noise": noise.get_state().cpu()}
    if noise.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(noise.device)
    return rng


def restore_rng(rng: dict[str, torch.Tensor], noise: torch.Generator, state: TrainState, seed: int) -> list[str]:
    """Load the saved RNG states (rank 0's) into torch and ``noise``. A noise state saved on another
    kind of device (CPU <-> CUDA) cannot be loaded, and DDP's other ranks have none: their noise is
    re-seeded from (seed, rank, global step). Returns the line that says a resume is not bit-exact, if one does."""
    device_type = noise.device.type
    saved_type, state.noise_device = state.noise_device, device_type
    if distributed.rank() == 0 and saved_type == device_type:
        torch.set_rng_state(rng["cpu"])
        noise.set_state(rng["noise"].cpu())
        if "cuda" in rng and device_type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], noise.device)
        return []
    reseed = (seed + 1 + distributed.rank()) * 1_000_003 + state.global_step
    noise.manual_seed(reseed)
    torch.manual_seed(reseed + 1)
    if distributed.rank() > 0:
        return []
    return [
        (
            f"resumed on {device_type} from a checkpoint written on {saved_type}: the noise is re-seeded "
            f"from (seed, step {state.global_step}), so the continuation is not bit-exact"
        )
    ]


def match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give loaded optimizer moments their parameter's memory format (checkpoints store them
    contiguous; fused Adam wants moments laid out like the parameter, e.g. channels_last)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)
