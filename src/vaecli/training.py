"""The training loop. Reports progress through a callback and never prints.

``start_run`` creates a run folder and ``resume_run`` reopens one; both return a
:class:`Trainer` whose :meth:`Trainer.fit` trains until the epochs are done, ``max_steps``
or ``time_budget`` seconds of training (per invocation; evaluation and checkpoints excluded) are reached, or ``stop`` is set (Ctrl-C in the CLI).
A checkpoint is written at every epoch end, every ``save_every`` seconds and when stopping,
so an interrupted run resumes exactly where it left off.
"""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from . import __version__
from . import checkpoint as ckpt
from . import distributed
from .config import DataConfig, ModelConfig, RunConfig, TrainConfig, accepted_image_size, build_configs, check_given
from .data import FolderLoad, ImageData, load_data, to_float
from .device import adam_kwargs, autocast, memory_format_for, resolve_precision
from .errors import ConfigError, TrainingError
from .losses import elbo_terms, kl_divergence, objective_loss, reconstruction_nll
from .metrics import EvalResult, evaluate
from .model import VAE
from .schedules import beta_at, capacity_at, lr_at

WARMUP_STEPS = 5  # steps excluded from images_per_second


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
    images_per_second: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns (also written to ``summary.json``)."""

    run: str
    path: str
    epochs: int
    steps: int
    seconds: float
    images_per_second: float
    train: dict[str, float]
    test: dict[str, float]
    active_units: int
    stopped: str  # 'done', 'max_steps', 'time_budget', 'interrupted'
    precision: str = "fp32"
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "path": self.path,
            "epochs": self.epochs,
            "steps": self.steps,
            "seconds": self.seconds,
            "images_per_second": self.images_per_second,
            "train": self.train,
            "test": self.test,
            "active_units": self.active_units,
            "stopped": self.stopped,
            "precision": self.precision,
            "device": self.device,
        }


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
            raise ConfigError(f"the data of run {path.name!r} changed since it started (fingerprint {loaded.fingerprint} != {run_cfg.data.fingerprint})")
    else:
        train, test = data
    if not (path / ckpt.STATE).exists():
        raise ConfigError(f"run {path.name!r} has no training state to resume from")
    trainer = Trainer(path, run_cfg, train, test)
    trainer.restore()
    distributed.on_main(lambda: ckpt.write_config(path, run_cfg))  # DDP: rank 0 writes
    return trainer


class Trainer:
    """Owns the model, optimizer, data and position of one run."""

    def __init__(self, path: Path, cfg: RunConfig, train: ImageData, test: ImageData) -> None:
        self.path = path
        self.cfg = cfg
        tc = cfg.train
        self.device = distributed.device_for(tc.device)  # DDP: cuda:LOCAL_RANK or cpu under torchrun
        self.precision = resolve_precision(tc.precision, self.device)
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
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=tc.lr, **_adam_kwargs(self.device))
        self.train_data = train
        self.test_data = test
        self.train_images = train.images.to(self.device)
        self.noise = torch.Generator(device=self.device).manual_seed(tc.seed + 1 + distributed.rank())
        self.epoch = 0
        self.step = 0  # completed steps in the current epoch
        self.global_step = 0
        self.train_seconds = 0.0
        self.nonfinite_skipped = 0
        self.history: list[dict[str, Any]] = []
        self._epoch_sums = torch.zeros(4, dtype=torch.float64)  # neg_elbo, recon, kl, images (host)
        self._acc = torch.zeros(4, dtype=torch.float64, device=self.device)  # the same, not yet synced

    def _fold(self) -> torch.Tensor:
        """Move the on-device running sums to the host (one sync) and return the epoch sums."""
        self._epoch_sums += distributed.all_reduce_sum(self._acc).cpu()  # DDP: sums over all ranks
        self._acc.zero_()
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
        """Load weights, optimizer, position and RNG states from the run folder."""
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
            if "noise" in rng:
                self.noise.set_state(rng["noise"].to(self.noise.get_state().device))
            if "cuda" in rng and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], self.device)
        else:  # DDP: the other ranks derive theirs from (seed, rank, step)
            seed = (self.cfg.train.seed + 1 + distributed.rank()) * 1_000_003 + self.global_step
            self.noise.manual_seed(seed)
            torch.manual_seed(seed + 1)
        _match_state_layout(self.optimizer)
        self.history = [r for r in ckpt.read_metrics(self.path) if int(r.get("epoch", 0)) <= self.epoch]

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
        n = len(self.train_data)
        n_rank = distributed.shard_size(n)  # DDP: images per rank per epoch (n in a single process)
        bs = min(tc.batch_size, n_rank)
        spe = steps_per_epoch(n_rank, bs)
        if spe == 0:
            raise TrainingError("the training split is empty")
        total_steps = spe * tc.epochs
        cb = callback or (lambda p: None)
        likelihood = self.cfg.model.likelihood
        log_scale = getattr(self.model, "log_scale", None)
        params = [p for p in self.model.parameters() if p.requires_grad]
        session_steps = 0
        t0 = time.perf_counter()
        last_save = t0
        last_report = 0.0
        warm_t: float | None = None  # training seconds at the end of the warm-up steps
        warm_images = 0
        images_done = 0
        excluded = 0.0  # seconds spent evaluating / checkpointing: neither --time-budget nor img/s counts them

        def trained() -> float:  # seconds of training in this invocation so far
            return time.perf_counter() - t0 - excluded
        stopped = "done"
        cb(Progress("start", self.epoch, tc.epochs, self.step, spe, self.global_step))
        self.model.train()
        seg_start = time.perf_counter()
        while self.epoch < tc.epochs:
            perm = distributed.shard(epoch_permutation(n, tc.seed, self.epoch))  # DDP: this rank's part
            while self.step < spe:
                if distributed.any_true(stop is not None and stop.is_set()):  # DDP: ranks stop together
                    stopped = "interrupted"
                    break
                if tc.max_steps is not None and session_steps >= tc.max_steps:
                    stopped = "max_steps"
                    break
                if tc.time_budget is not None and distributed.any_true(trained() >= tc.time_budget):
                    stopped = "time_budget"
                    break
                idx = perm[self.step * bs : (self.step + 1) * bs].to(self.device)
                x = to_float(self.train_images[idx]).contiguous(memory_format=self.memory_format)
                if self.cfg.data.binarize:  # dynamic binarisation, x ~ Bernoulli(pixel) per batch (issue 7)
                    x = torch.bernoulli(x, generator=self.noise)
                beta = beta_at(self.epoch + self.step / spe, tc.beta, tc.anneal, tc.cyclical, tc.epochs)
                frac = trained() / tc.time_budget if tc.time_budget else None
                lr = lr_at(self.global_step, total_steps, tc.lr, tc.lr_schedule, tc.warmup_steps, time_fraction=frac)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                with autocast(self.device, self.precision):
                    out = self.net(x, generator=self.noise)  # DDP: the wrapper averages gradients
                recon = reconstruction_nll(out.logits, x, likelihood, log_scale)
                kl = kl_divergence(out.mu, out.logvar)
                terms = elbo_terms(recon, kl, beta)
                if tc.capacity or tc.free_bits or tc.tc_beta:  # capacity / free bits / beta-TCVAE (issue 7)
                    cap = capacity_at(self.epoch + self.step / spe, tc.capacity, tc.capacity_epochs or tc.epochs) if tc.capacity else None
                    terms.loss = objective_loss(recon, out.mu, out.logvar, out.z, beta, capacity=cap, free_bits=tc.free_bits, tc_beta=tc.tc_beta)
                if not distributed.all_finite(terms.loss):  # DDP: all ranks skip or stop together
                    if not tc.skip_nonfinite:
                        raise TrainingError(
                            f"non-finite loss at epoch {self.epoch + 1}, step {self.step + 1}: stopped, "
                            "the last good checkpoint is kept (use --skip-nonfinite to skip such batches)"
                        )
                    self.nonfinite_skipped += 1
                    self.optimizer.zero_grad(set_to_none=True)
                else:
                    self.optimizer.zero_grad(set_to_none=True)
                    terms.loss.backward()
                    if tc.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
                    self.optimizer.step()
                    b = x.shape[0]
                    self._acc[:3] += torch.stack([terms.neg_elbo, terms.recon, terms.kl]).detach().double() * b
                    self._acc[3] += b
                self.step += 1
                self.global_step += 1
                session_steps += 1
                images_done += x.shape[0] * distributed.world_size()  # DDP: every rank takes bs images
                if session_steps == WARMUP_STEPS:
                    _sync(self.device)
                    warm_t, warm_images = trained(), images_done
                now = time.perf_counter()
                if now - last_report >= 0.1 or self.step == spe:
                    last_report = now
                    ips = _rate(images_done - warm_images, trained() - warm_t) if warm_t is not None else 0.0
                    cb(Progress("step", self.epoch, tc.epochs, self.step, spe, self.global_step,
                                loss=float(terms.loss.detach()), recon=float(terms.recon.detach()), kl=float(terms.kl.detach()),
                                beta=beta, lr=lr, images_per_second=ips))  # fmt: skip
                if distributed.any_true(now - last_save >= tc.save_every):  # DDP: ranks save together
                    self.train_seconds += now - seg_start
                    seg_start = now
                    self.save()
                    last_save = time.perf_counter()
                    excluded += last_save - now
            if self.step < spe:
                break
            # ---- epoch end: evaluate, record, checkpoint
            now = time.perf_counter()
            self.train_seconds += now - seg_start
            row = self._end_epoch(tc, spe)
            self.epoch += 1
            self.step = 0
            self._epoch_sums.zero_()
            self.history.append(row)
            if distributed.is_main():  # DDP: rank 0 writes; metrics before the checkpoint (a resume drops rows past it)
                ckpt.write_metrics(self.path, self.history)
                _plot(self.path, self.history)
            self.save()
            cb(Progress("epoch", self.epoch - 1, tc.epochs, spe, spe, self.global_step, metrics=row))
            last_save = seg_start = time.perf_counter()
            excluded += last_save - now
        _sync(self.device)
        t_end = time.perf_counter()
        if self.step != 0 or stopped != "done":
            self.train_seconds += t_end - seg_start
        ips = _rate(images_done - warm_images, trained() - warm_t) if warm_t is not None else 0.0
        if stopped != "done" and session_steps > 0:
            self.save()
        test = evaluate(self.model, self.test_data, device=self.device, seed=tc.seed)
        sums = self._fold() if self._fold()[3] > 0 else None
        if sums is not None:
            train_brief = {"neg_elbo": float(sums[0] / sums[3]), "recon": float(sums[1] / sums[3]), "kl": float(sums[2] / sums[3])}
        elif self.history:
            train_brief = dict(self.history[-1]["train"])
        else:
            train_brief = {"neg_elbo": float("nan"), "recon": float("nan"), "kl": float("nan")}
        result = TrainResult(
            run=self.path.name,
            path=str(self.path),
            epochs=self.epoch,
            steps=self.global_step,
            seconds=round(time.perf_counter() - t0, 3),
            images_per_second=round(ips, 2),
            train=train_brief,
            test=test.brief(),
            active_units=test.active_units,
            stopped=stopped,
            precision=self.precision,
            device=str(self.device),
        )
        summary = result.to_dict()
        summary["test_per_dim_kl"] = test.per_dim_kl
        summary["test_mu_variance"] = test.mu_variance
        summary["nonfinite_skipped"] = self.nonfinite_skipped
        summary["train_seconds"] = round(self.train_seconds, 3)
        # ---- DDP: record the world size and effective batch; check that the ranks agree
        summary["world_size"] = distributed.world_size()
        summary["effective_batch_size"] = bs * distributed.world_size()
        digests = distributed.param_digests(self.model) if distributed.is_distributed() else []
        if digests:
            summary["param_sha256_per_rank"] = digests
        if distributed.is_main():
            ckpt.write_summary(self.path, summary)
        if len(set(digests)) > 1:
            raise TrainingError(f"the {len(digests)} ranks ended with different parameters (a DDP bug); the checkpoint holds rank 0's")
        # ---- end DDP
        cb(Progress("end", self.epoch, tc.epochs, self.step, spe, self.global_step, images_per_second=ips, metrics=summary))
        return result

    def _end_epoch(self, tc: TrainConfig, spe: int) -> dict[str, Any]:
        sums = self._fold()
        count = max(float(sums[3]), 1.0)
        test: EvalResult = evaluate(self.model, self.test_data, device=self.device, seed=tc.seed)
        self.model.train()
        return {
            "epoch": self.epoch + 1,
            "step": self.global_step,
            "beta": beta_at(self.epoch + 1 - 1e-9, tc.beta, tc.anneal, tc.cyclical, tc.epochs),
            "train": {"neg_elbo": float(sums[0]) / count, "recon": float(sums[1]) / count, "kl": float(sums[2]) / count},
            "test": test.brief(),
            "active_units": test.active_units,
            "train_seconds": round(self.train_seconds, 3),
        }


def _rank_steps(n: int, batch_size: int, world: int) -> int:
    """Steps per epoch of each rank when ``n`` images are sharded over ``world`` ranks."""
    m = distributed.shard_size(n, world)
    return steps_per_epoch(m, min(batch_size, m)) if m else 0


def _adam_kwargs(device: torch.device) -> dict[str, Any]:
    """Fused Adam on CPU and CUDA, foreach elsewhere (see :func:`device.adam_kwargs`)."""
    return adam_kwargs(device)


def _match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give loaded optimizer moments their parameter's memory format (checkpoints store them
    contiguous; fused Adam wants moments laid out like the parameter, e.g. channels_last)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def _rate(images: int, seconds: float) -> float:
    """Images per second, 0 before any time has passed."""
    return images / seconds if seconds > 0 else 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _plot(path: Path, rows: list[dict[str, Any]]) -> None:
    try:
        from .plot import plot_training_curves
    except ImportError:  # pragma: no cover
        return
    plot_training_curves(path / ckpt.LOSS_PLOT, rows)


__all__ = ["Progress", "TrainResult", "Trainer", "start_run", "resume_run", "epoch_permutation", "steps_per_epoch"]
