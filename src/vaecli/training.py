"""The training loop. Reports progress through a callback and never prints.

``start_run`` creates a run folder and ``resume_run`` reopens one; both return a
:class:`Trainer` whose :meth:`Trainer.fit` trains until the epochs are done, ``max_steps``
or ``time_budget`` seconds of training (per invocation; evaluation and checkpoints excluded) are reached, or ``stop`` is set (Ctrl-C in the CLI).
A checkpoint is written at every epoch end, every ``save_every`` seconds and when stopping,
so an interrupted run resumes exactly where it left off.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from . import __version__, distributed
from . import checkpoint as ckpt
from .config import DataConfig, ModelConfig, RunConfig, TrainConfig, accepted_image_size, build_configs, check_given
from .data import FolderLoad, ImageData, load_data, to_float
from .device import accumulator_dtype, adam_kwargs, autocast, configure_cuda, memory_format_for, resolve_precision
from .errors import ConfigError, TrainingError
from .losses import LossTerms, kl_per_dim, reconstruction_nll, training_terms
from .metrics import EvalResult, evaluate
from .model import VAE
from .schedules import beta_at, capacity_at, lr_at

WARMUP_STEPS = 5  # steps excluded from images_per_second
REPORT_SECONDS = 0.1  # CPU: progress (reading the loss values) at most 10 times a second
REPORT_STEPS_DEVICE = 50  # CUDA / MPS: progress every N steps, since each read of a value is a device sync
CHECK_STEPS_DDP = 4  # DDP: steps between the control checks (one small all-reduce each)


@dataclass
class Progress:
    """One progress report (``kind`` is 'start', 'step', 'epoch' or 'end')."""

    kind: str
    epoch: int  # 0-based index of the current epoch
    epochs: int
    step: int  # step within the epoch (completed)
    steps_per_epoch: int
    global_step: int
    loss: float = float("nan")
    recon: float = float("nan")
    kl: float = float("nan")
    beta: float = 0.0
    lr: float = 0.0
    images_per_second: float | None = None  # None before the warm-up steps (nothing measured yet)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns (also written to ``summary.json``)."""

    run: str
    path: str
    epochs: int
    steps: int
    seconds: float
    images_per_second: float | None  # None when the run stopped before the warm-up steps ended
    train: dict[str, float]
    test: dict[str, float]
    active_units: int
    stopped: str  # 'done', 'max_steps', 'time_budget', 'interrupted'
    precision: str = "fp32"
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (``summary.json``)."""
        return asdict(self)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffling order of ``epoch``: derived from (seed, epoch), so resuming needs no state."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches per epoch; a last batch of a single image is dropped (BatchNorm needs two)."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= 2 else 0)


def _versions() -> dict[str, str]:
    import torchvision

    return {"vaecli": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version()}


def plan_run(
    data_cfg: DataConfig, given: dict[str, Any], load: FolderLoad | None = None
) -> tuple[ModelConfig, DataConfig, TrainConfig, tuple[ImageData, ImageData]]:
    """Load the data, then fill every option the user did not give (``None``) by the one rule for
    defaults (:func:`vaecli.config.build_configs`), keyed on the data's size and channels and the
    device. Returns the configs and the data, ready for :func:`start_run`. ``load``: progress and
    notice callbacks and cache use of a folder load; its detected size is rounded to the given arch."""
    check_given(given)  # a bad flag fails before a long load
    data_cfg.validate()
    device = distributed.device_for(given.get("device") or "auto")
    load = load or FolderLoad()
    load.round_size = lambda s: accepted_image_size(s, given.get("arch"), given.get("widths"))
    train, test, data_cfg = distributed.local_main_first(lambda: load_data(data_cfg, load=load))  # DDP: one download per machine
    model_cfg, train_cfg = build_configs(given, train.image_size, train.channels, device.type)
    return model_cfg, data_cfg, train_cfg, (train, test)


def start_run(
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    name: str | None = None,
    overwrite: bool = False,
    data: tuple[ImageData, ImageData] | None = None,
) -> Trainer:
    """Load the data, create the run folder and write ``config.json``; returns a fresh :class:`Trainer`."""
    train_cfg.validate()
    data_cfg.validate()
    train_cfg = replace(train_cfg, world_size=distributed.world_size())  # DDP: recorded in config.json
    if data is None:
        train, test, data_cfg = distributed.local_main_first(lambda: load_data(data_cfg))  # DDP: one download per machine
    else:
        train, test = data
        data_cfg = replace(data_cfg, image_size=train.image_size, channels=train.channels, train_size=len(train), test_size=len(test))
    model_cfg = replace(model_cfg, channels=train.channels, image_size=train.image_size)
    model_cfg.validate()

    def create() -> tuple[Path, RunConfig]:
        run_name = ckpt.validate_run_name(name) if name else ckpt.generate_run_name()
        existing = ckpt.runs_dir() / run_name
        if existing.exists() and not overwrite and ((existing / ckpt.MODEL).exists() or (existing / ckpt.STATE).exists()):
            raise ConfigError(f"run {run_name!r} already exists: use --resume {run_name} to continue it or --overwrite to replace it")
        run_cfg = RunConfig(name=run_name, model=model_cfg, data=data_cfg, train=train_cfg, created=ckpt.utc_now(), versions=_versions())
        path = ckpt.create_run_dir(run_name, overwrite=overwrite)
        ckpt.write_config(path, run_cfg)
        return path, run_cfg

    path, run_cfg = distributed.on_main(create)  # DDP: rank 0 names and creates the run, the others get it
    return Trainer(path, run_cfg, train, test)


def resume_run(ref: str, overrides: dict[str, Any] | None = None, data: tuple[ImageData, ImageData] | None = None) -> Trainer:
    """Reopen run ``ref`` to continue it. ``overrides`` may change epochs, max_steps, time_budget,
    device, precision and save_every; the data must be the data the run started on."""
    path = ckpt.resolve_run(ref)
    run_cfg = ckpt.read_config(path)
    allowed = {"epochs", "max_steps", "time_budget", "device", "precision", "save_every", "skip_nonfinite", "world_size"}
    bad = set(overrides or {}) - allowed
    if bad:
        raise ConfigError(f"cannot change {', '.join(sorted(bad))} when resuming")
    run_cfg.train = replace(run_cfg.train, **{**(overrides or {}), "world_size": distributed.world_size()})
    run_cfg.train.validate()
    if data is None:
        train, test, loaded = distributed.local_main_first(lambda: load_data(run_cfg.data))  # DDP: one download per machine
        if run_cfg.data.fingerprint and loaded.fingerprint != run_cfg.data.fingerprint:
            raise ConfigError(
                f"the data of run {path.name!r} changed since it started (fingerprint {loaded.fingerprint} != {run_cfg.data.fingerprint})"
            )
    else:
        train, test = data
    if not (path / ckpt.STATE).exists():
        raise ConfigError(f"run {path.name!r} has no training state to resume from")
    trainer = Trainer(path, run_cfg, train, test)
    trainer.restore()
    distributed.on_main(lambda: ckpt.write_config(path, run_cfg))  # DDP: rank 0 writes
    return trainer


@dataclass
class _Session:
    """Clocks and counters of one :meth:`Trainer.fit` call."""

    spe: int  # steps per epoch (of this rank)
    bs: int  # images per step (of this rank)
    n_rank: int  # images per epoch (of this rank): the last step takes the rest
    total_steps: int
    report_every: int  # 0: report by time (CPU); N: every N steps (each report reads values: a device sync)
    check_every: int  # steps between control checks (DDP: one all-reduce per check)
    t0: float = field(default_factory=time.perf_counter)
    excluded: float = 0.0  # seconds evaluating / checkpointing: neither --time-budget nor img/s counts them
    steps: int = 0
    images: int = 0  # images of all ranks
    warm_t: float | None = None  # training seconds at the end of the warm-up steps
    warm_images: int = 0
    last_report: float = 0.0
    last_save: float = 0.0
    seg_start: float = 0.0  # start of the training time not yet added to Trainer.train_seconds

    def __post_init__(self) -> None:
        self.last_save = self.seg_start = self.t0

    def trained(self) -> float:
        """Seconds of training in this invocation so far."""
        return time.perf_counter() - self.t0 - self.excluded

    def rate(self) -> float | None:
        """Images per second after the warm-up steps; None before them (nothing measured)."""
        return None if self.warm_t is None else _rate(self.images - self.warm_images, self.trained() - self.warm_t)


class Trainer:
    """Owns the model, optimizer, data and position of one run."""

    def __init__(self, path: Path, cfg: RunConfig, train: ImageData, test: ImageData) -> None:
        self.path = path
        self.cfg = cfg
        tc = cfg.train
        self.device = distributed.device_for(tc.device)  # DDP: cuda:LOCAL_RANK or cpu under torchrun
        self.precision = resolve_precision(tc.precision, self.device)
        self.runtime: dict[str, Any] = configure_cuda(self.device)  # cuDNN autotune + TF32 policy on CUDA
        torch.manual_seed(tc.seed)
        self.model = VAE(cfg.model).to(self.device)
        self.memory_format = memory_format_for(self.model, self.device)
        self.model.to(memory_format=self.memory_format)
        # ---- DDP (distributed.py): the training forward runs through the DDP wrapper (``self.net``);
        # ``self.model`` stays the bare VAE for evaluation and checkpoints. Other ranks draw their own
        # noise (seed + 1 + rank; rank 0 matches a single process) and dropout masks (seed + rank).
        self.net = distributed.wrap(self.model, self.device)
        if distributed.rank() > 0:
            torch.manual_seed(tc.seed + distributed.rank())
        # ---- end DDP
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=tc.lr, **adam_kwargs(self.device))
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        self._lr = tc.lr  # the learning rate the param groups hold (set only when it changes)
        self.train_data = train
        self.test_data = test
        self.train_images = train.images.to(self.device)
        self.noise = torch.Generator(device=self.device).manual_seed(tc.seed + 1 + distributed.rank())
        self.epoch = 0
        self.step = 0  # completed steps in the current epoch
        self.global_step = 0
        self.train_seconds = 0.0
        self.nonfinite_skipped = 0
        self.history: list[dict[str, Any]] = []  # complete epochs only (metrics.jsonl may add one partial row)
        self.notices: list[str] = []  # one-line notes for the user (e.g. a resume that is not bit-exact)
        self._epoch_sums = torch.zeros(4, dtype=torch.float64)  # neg_elbo, recon, kl, images (host)
        self._acc = torch.zeros(3, dtype=accumulator_dtype(self.device), device=self.device)  # the same, not yet synced
        self._acc_images = 0  # images in ``_acc`` (this rank)
        self._bad_at = torch.full((), -1, dtype=torch.int64, device=self.device)  # first non-finite global step
        self._last_eval: tuple[int, EvalResult] | None = None  # (global step, test result) of the latest evaluation

    def _fold(self) -> torch.Tensor:
        """Move the on-device running sums to the host (one sync) and return the epoch sums."""
        self._epoch_sums[:3] += distributed.all_reduce_sum(self._acc).cpu().double()  # DDP: sums over all ranks
        self._epoch_sums[3] += self._acc_images * distributed.world_size()  # ranks take equal batches, skip together
        self._acc.zero_()
        self._acc_images = 0
        return self._epoch_sums

    # -------------------------------------------------------------- state
    def _state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "global_step": self.global_step,
            "train_seconds": self.train_seconds,
            "nonfinite_skipped": self.nonfinite_skipped,
            "epoch_sums": [float(v) for v in self._fold()],
            "world_size": distributed.world_size(),
            "noise_device": self.noise.device.type,  # a generator state loads only into one of its type
        }

    def save(self) -> None:
        """Write the training state with a copy of the weights (the resume point, one atomic file),
        then the weights; a kill between the two leaves model.safetensors one checkpoint behind.
        Under DDP every rank calls this (the running sums are all-reduced); rank 0 writes."""
        state = self._state()
        if distributed.is_main():
            rng = {"cpu": torch.get_rng_state(), "noise": self.noise.get_state().cpu()}
            if self.device.type == "cuda":
                rng["cuda"] = torch.cuda.get_rng_state(self.device)
            ckpt.save_train_state(self.path, self.optimizer, rng, state, model=self.model)
            ckpt.save_model(self.path, self.model, self.cfg.model.to_dict())
        distributed.barrier()  # DDP: the others wait until the checkpoint is on disk

    def restore(self) -> None:
        """Load weights, optimizer, position and RNG states from the run folder. A noise state
        saved on another kind of device (CPU <-> CUDA) cannot be loaded: the noise is then re-seeded
        from (seed, global step) and :attr:`notices` says the continuation is not bit-exact."""
        if distributed.is_main():  # DDP: only the writer (another rank could delete its temp file mid-write)
            ckpt.remove_temp_files(self.path)  # left by a killed writer
        rng, st = ckpt.load_train_state(self.path, self.optimizer, self.model)
        try:
            self.epoch, self.step, self.global_step = int(st["epoch"]), int(st["step"]), int(st["global_step"])
            self.train_seconds = float(st.get("train_seconds", 0.0))
            self.nonfinite_skipped = int(st.get("nonfinite_skipped", 0))
            self._epoch_sums = torch.tensor(st.get("epoch_sums", [0.0] * 4), dtype=torch.float64)
            saved_world = int(st.get("world_size", 1))
        except (KeyError, TypeError, ValueError):
            raise ckpt.CheckpointError(f"{self.path / ckpt.STATE}: damaged training state") from None
        self._convert_position(saved_world)
        if distributed.rank() == 0:  # the saved RNG states are rank 0's
            if "cpu" in rng:
                torch.set_rng_state(rng["cpu"])
            saved_type = _noise_device_type(st, rng.get("noise"))
            if saved_type == self.noise.device.type:
                self.noise.set_state(rng["noise"].cpu())
            else:
                self._reseed_noise()
                if saved_type is not None:
                    self.notices.append(
                        f"resumed on {self.device.type} from a checkpoint written on {saved_type}: the noise is re-seeded "
                        f"from (seed, step {self.global_step}), so the continuation is not bit-exact"
                    )
            if "cuda" in rng and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], self.device)
        else:  # DDP: the other ranks derive theirs from (seed, rank, step)
            self._reseed_noise()
        _match_state_layout(self.optimizer)
        self.history = [r for r in ckpt.read_metrics(self.path) if int(r.get("epoch", 0)) <= self.epoch and not r.get("partial")]

    def _reseed_noise(self) -> None:
        """Noise (and torch's global generator) from (seed, rank, global step): a resume point
        that needs no saved generator state."""
        seed = (self.cfg.train.seed + 1 + distributed.rank()) * 1_000_003 + self.global_step
        self.noise.manual_seed(seed)
        torch.manual_seed(seed + 1)

    def _convert_position(self, saved_world: int) -> None:
        """DDP: a run resumed with another world size keeps its place as a fraction of the epoch
        (steps per epoch scale with 1 / world size); ``global_step`` is recounted in the new steps
        so the learning-rate schedule continues smoothly. Exact at epoch boundaries."""
        world = distributed.world_size()
        if saved_world == world:
            return
        n, bs = len(self.train_data), self.cfg.train.batch_size
        old, new = _rank_steps(n, bs, saved_world), _rank_steps(n, bs, world)
        if old > 0 and new > 0:
            self.step = min(self.step * new // old, new - 1) if self.step else 0
            self.global_step = self.epoch * new + self.step

    # -------------------------------------------------------------- loop
    def fit(self, callback: Callable[[Progress], None] | None = None, stop: threading.Event | None = None) -> TrainResult:
        """Train; returns the final numbers. Checkpoints as it goes (see module docstring)."""
        tc = self.cfg.train
        s = self._session()
        cb = callback or _ignore
        cb(Progress("start", self.epoch, tc.epochs, self.step, s.spe, self.global_step))
        self.model.train()
        stopped = None
        while self.epoch < tc.epochs and stopped is None:
            # the order is made on the CPU from (seed, epoch), the same on every device; one copy per epoch
            perm = distributed.shard(epoch_permutation(len(self.train_data), tc.seed, self.epoch)).to(self.device)
            while self.step < s.spe:
                stopped = self._should_stop(s, stop)
                if stopped:
                    break
                terms, beta, lr = self._step(s, perm)
                self._count(s)
                if self._report_due(s):
                    self._report(s, cb, terms, beta, lr)
            if self.step == s.spe:
                self._end_epoch(s, cb)
        return self._finish(s, stopped or "done", cb)

    def _session(self) -> _Session:
        tc = self.cfg.train
        n_rank = distributed.shard_size(len(self.train_data))  # DDP: images per rank per epoch (n in a single process)
        bs = min(tc.batch_size, n_rank)
        spe = steps_per_epoch(n_rank, bs)
        if spe == 0:
            raise TrainingError("the training split is empty")
        on_cpu = self.device.type == "cpu"
        return _Session(spe=spe, bs=bs, n_rank=n_rank, total_steps=spe * tc.epochs, report_every=0 if on_cpu else REPORT_STEPS_DEVICE,
                        check_every=CHECK_STEPS_DDP if distributed.is_distributed() else 1)  # fmt: skip

    def _should_stop(self, s: _Session, stop: threading.Event | None) -> str | None:
        """The one control check before a step: why to stop, or None; checkpoints when one is due.
        Under DDP every ``check_every`` steps, the flags of all ranks (stop, budget, save, non-finite)
        OR-ed in ONE small all-reduce, so the ranks stop and save together."""
        tc = self.cfg.train
        if tc.max_steps is not None and s.steps >= tc.max_steps:  # the same count on every rank
            return "max_steps"
        if s.steps % s.check_every:
            return None
        flags = [stop is not None and stop.is_set(), tc.time_budget is not None and s.trained() >= tc.time_budget,
                 time.perf_counter() - s.last_save >= tc.save_every]  # fmt: skip
        if distributed.is_distributed():
            *flags, bad = distributed.any_flags(flags, self._bad_at >= 0)
            if bad:
                self._raise_nonfinite(s)
        interrupted, budget, save = flags
        if interrupted or budget:
            return "interrupted" if interrupted else "time_budget"
        if save:
            self._checkpoint(s)
        return None

    def _step(self, s: _Session, perm: torch.Tensor) -> tuple[LossTerms, float, float]:
        """One optimisation step on batch ``self.step`` of ``perm``. Reconstruction and per-dimension
        KL are computed once, the loss and -ELBO derived from them. No host sync: a non-finite loss
        is noted on the device (``_bad_at``) and read at the next report, checkpoint or end."""
        tc = self.cfg.train
        pos = self.epoch + self.step / s.spe
        beta = beta_at(pos, tc.beta, tc.anneal, tc.cyclical, tc.epochs)
        frac = s.trained() / tc.time_budget if tc.time_budget else None
        lr = lr_at(self.global_step, s.total_steps, tc.lr, tc.lr_schedule, tc.warmup_steps, time_fraction=frac)
        if lr != self._lr:
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            self._lr = lr
        x = to_float(self.train_images[perm[self.step * s.bs : (self.step + 1) * s.bs]]).contiguous(memory_format=self.memory_format)
        if self.cfg.data.binarize:  # dynamic binarisation, x ~ Bernoulli(pixel) per batch
            x = torch.bernoulli(x, generator=self.noise)
        with autocast(self.device, self.precision):
            out = self.net(x, generator=self.noise)  # DDP: the wrapper averages gradients
        cap = capacity_at(pos, tc.capacity, tc.capacity_epochs or tc.epochs) if tc.capacity else None
        terms = training_terms(
            reconstruction_nll(out.logits, x, self.cfg.model.likelihood, getattr(self.model, "log_scale", None)),
            kl_per_dim(out.mu, out.logvar), beta,
            mu=out.mu, logvar=out.logvar, z=out.z, capacity=cap, free_bits=tc.free_bits, tc_beta=tc.tc_beta,
        )  # fmt: skip
        if tc.skip_nonfinite and not distributed.all_finite(terms.loss):  # a per-step check, only when skipping
            self.nonfinite_skipped += 1
            return terms, beta, lr
        self._bad_at = torch.where(torch.isfinite(terms.loss) | (self._bad_at >= 0), self._bad_at, self.global_step)
        self.optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self._params, tc.grad_clip)
        self.optimizer.step()
        self._acc.add_(torch.stack((terms.neg_elbo, terms.recon, terms.kl)).detach(), alpha=x.shape[0])
        self._acc_images += x.shape[0]
        return terms, beta, lr

    def _count(self, s: _Session) -> None:
        """Advance the position and the clocks after a step."""
        s.images += min(s.bs, s.n_rank - self.step * s.bs) * distributed.world_size()  # DDP: every rank takes a batch
        self.step += 1
        self.global_step += 1
        s.steps += 1
        if s.steps == WARMUP_STEPS:
            _sync(self.device)
            s.warm_t, s.warm_images = s.trained(), s.images

    def _report_due(self, s: _Session) -> bool:
        if self.step == s.spe:
            return True
        if s.report_every:
            return s.steps % s.report_every == 0
        now = time.perf_counter()
        if now - s.last_report >= REPORT_SECONDS:
            s.last_report = now
            return True
        return False

    def _report(self, s: _Session, cb: Callable[[Progress], None], terms: LossTerms, beta: float, lr: float) -> None:
        """A 'step' report: reads the loss values (one sync) and, in a single process, the non-finite flag."""
        if not distributed.is_distributed():  # DDP: read at the control checks, where the ranks agree
            self._check_finite(s)
        loss, recon, kl = torch.stack((terms.loss, terms.recon, terms.kl)).detach().tolist()
        cb(Progress("step", self.epoch, self.cfg.train.epochs, self.step, s.spe, self.global_step,
                    loss=loss, recon=recon, kl=kl, beta=beta, lr=lr, images_per_second=s.rate()))  # fmt: skip

    def _check_finite(self, s: _Session) -> None:
        """Raise TrainingError when a step since the start had a non-finite loss (DDP: on any rank;
        one all-reduce). Called before every checkpoint, so a non-finite loss never reaches one."""
        if distributed.any_flags([], self._bad_at >= 0)[0]:
            self._raise_nonfinite(s)

    def _raise_nonfinite(self, s: _Session) -> None:
        at = int(self._bad_at)
        where = f"at epoch {at // s.spe + 1}, step {at % s.spe + 1}" if at >= 0 else "on another rank"
        kept = "the last good checkpoint is kept" if (self.path / ckpt.STATE).exists() else "no checkpoint was written yet"
        raise TrainingError(
            f"non-finite loss {where}: stopped, {kept} (try a lower --lr or more --warmup-steps, or --skip-nonfinite to skip such batches)"
        )

    def _checkpoint(self, s: _Session) -> None:
        """A --save-every checkpoint mid-epoch; its time is not charged to training."""
        now = time.perf_counter()
        self._check_finite(s)
        self.train_seconds += now - s.seg_start
        self.save()
        s.last_save = s.seg_start = time.perf_counter()
        s.excluded += s.last_save - now

    def _end_epoch(self, s: _Session, cb: Callable[[Progress], None]) -> None:
        """Epoch end: evaluate, record the epoch in metrics.jsonl, checkpoint (not charged to training)."""
        now = time.perf_counter()
        self._check_finite(s)
        self.train_seconds += now - s.seg_start
        row = self._metrics_row(s)
        self.epoch += 1
        self.step = 0
        self._epoch_sums.zero_()
        self.history.append(row)
        self._write_metrics(self.history)
        self.save()
        cb(Progress("epoch", self.epoch - 1, self.cfg.train.epochs, s.spe, s.spe, self.global_step, metrics=row))
        s.last_save = s.seg_start = time.perf_counter()
        s.excluded += s.last_save - now

    def _finish(self, s: _Session, stopped: str, cb: Callable[[Progress], None]) -> TrainResult:
        """The end of fit(): checkpoint a stop (with a partial row in metrics.jsonl when it fell
        inside an epoch), evaluate, write summary.json and build the result."""
        tc = self.cfg.train
        _sync(self.device)
        if self.step != 0 or stopped != "done":
            self.train_seconds += time.perf_counter() - s.seg_start
        ips = s.rate()
        seconds = time.perf_counter() - s.t0
        if stopped != "done" and s.steps > 0:
            self._check_finite(s)
            if self.step > 0:  # every run has its numbers: the part of the epoch done so far
                self._write_metrics([*self.history, self._metrics_row(s, partial=True)])
            self.save()
        test = self._evaluate()
        sums = self._fold()
        if sums[3] > 0:
            train_brief = {"neg_elbo": float(sums[0] / sums[3]), "recon": float(sums[1] / sums[3]), "kl": float(sums[2] / sums[3])}
        elif self.history:
            train_brief = dict(self.history[-1]["train"])
        else:
            train_brief = {"neg_elbo": float("nan"), "recon": float("nan"), "kl": float("nan")}
        result = TrainResult(
            run=self.path.name, path=str(self.path), epochs=self.epoch, steps=self.global_step, seconds=round(seconds, 3),
            images_per_second=None if ips is None else round(ips, 2), train=train_brief, test=test.brief(),
            active_units=test.active_units, stopped=stopped, precision=self.precision, device=str(self.device),
        )  # fmt: skip
        summary = {**result.to_dict(), "epochs_done": round(self.epoch + self.step / s.spe, 4), "test_per_dim_kl": test.per_dim_kl,
                   "test_mu_variance": test.mu_variance, "nonfinite_skipped": self.nonfinite_skipped,
                   "train_seconds": round(self.train_seconds, 3), "runtime": self._runtime(), "notices": list(self.notices)}  # fmt: skip
        # ---- DDP: record the world size and effective batch; check that the ranks agree
        summary["world_size"] = distributed.world_size()
        summary["effective_batch_size"] = s.bs * distributed.world_size()
        digests = distributed.param_digests(self.model) if distributed.is_distributed() else []
        if digests:
            summary["param_sha256_per_rank"] = digests
        if distributed.is_main():
            ckpt.write_summary(self.path, summary)
        if len(set(digests)) > 1:
            raise TrainingError(f"the {len(digests)} ranks ended with different parameters (a DDP bug); the checkpoint holds rank 0's")
        # ---- end DDP
        cb(Progress("end", self.epoch, tc.epochs, self.step, s.spe, self.global_step, images_per_second=ips, metrics=summary))
        return result

    def _evaluate(self) -> EvalResult:
        """The test split at the current weights (DDP: sharded over the ranks); reused while the weights are unchanged."""
        if self._last_eval is not None and self._last_eval[0] == self.global_step:
            return self._last_eval[1]
        shard = (distributed.rank(), distributed.world_size()) if distributed.is_distributed() else None
        test = evaluate(self.model, self.test_data, device=self.device, seed=self.cfg.train.seed, shard=shard)
        self.model.train()
        self._last_eval = (self.global_step, test)
        return test

    def _metrics_row(self, s: _Session, partial: bool = False) -> dict[str, Any]:
        """The metrics.jsonl row of the current epoch: complete, or ``partial`` (marked, with its steps)."""
        tc = self.cfg.train
        sums = self._fold()
        count = max(float(sums[3]), 1.0)
        test = self._evaluate()
        done = self.epoch + (self.step / s.spe if partial else 1.0)
        row: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "step": self.global_step,
            "beta": beta_at(done - 1e-9, tc.beta, tc.anneal, tc.cyclical, tc.epochs),
            "train": {"neg_elbo": float(sums[0]) / count, "recon": float(sums[1]) / count, "kl": float(sums[2]) / count},
            "test": test.brief(),
            "active_units": test.active_units,
            "train_seconds": round(self.train_seconds, 3),
        }
        if partial:
            row.update(partial=True, steps=self.step, epochs_done=round(done, 4))
        return row

    def _write_metrics(self, rows: list[dict[str, Any]]) -> None:
        if distributed.is_main():  # DDP: rank 0 writes; metrics before the checkpoint (a resume drops rows past it)
            ckpt.write_metrics(self.path, rows)
            _plot(self.path, rows)

    def _runtime(self) -> dict[str, Any]:
        """How this invocation ran (summary.json ``runtime``): threads, OpenMP policy, layout, CUDA policy."""
        return {"threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
                "memory_format": "channels_last" if self.memory_format == torch.channels_last else "contiguous",
                **self.runtime}  # fmt: skip


def _rank_steps(n: int, batch_size: int, world: int) -> int:
    """Steps per epoch of each rank when ``n`` images are sharded over ``world`` ranks."""
    m = distributed.shard_size(n, world)
    return steps_per_epoch(m, min(batch_size, m)) if m else 0


def _match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give loaded optimizer moments their parameter's memory format (checkpoints store them
    contiguous; fused Adam wants moments laid out like the parameter, e.g. channels_last)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def _ignore(progress: Progress) -> None:
    """The callback of a fit() without one."""


def _noise_device_type(state: dict[str, Any], saved: torch.Tensor | None) -> str | None:
    """The device type of a saved noise-generator state: recorded with the state;
    in older checkpoints told by size (a CPU generator's state is 5,056 bytes, a CUDA one's 16)."""
    if saved is None:
        return None
    if isinstance(state.get("noise_device"), str):
        return state["noise_device"]
    return "cpu" if saved.numel() == torch.Generator().get_state().numel() else "cuda"


def _rate(images: int, seconds: float) -> float:
    """Images per second, 0 before any time has passed."""
    return images / seconds if seconds > 0 else 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _plot(path: Path, rows: list[dict[str, Any]]) -> None:
    from .plot import plot_training_curves  # Pillow only; imported when the first epoch ends

    plot_training_curves(path / ckpt.LOSS_PLOT, rows)


__all__ = ["Progress", "TrainResult", "Trainer", "start_run", "resume_run", "epoch_permutation", "steps_per_epoch"]
