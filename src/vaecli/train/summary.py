"""The end of a run: :class:`TrainResult` and the ``summary.json`` it writes (the headline, the
test split's per-dimension statistics, how the run ran)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .. import distributed
from ..errors import TrainingError
from ..eval.metrics import EvalResult, bce_floor
from ..model.vae import VAE
from ..runs import store as ckpt
from .session import Session


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns: the headline of ``summary.json`` (the whole of it in ``summary``)."""

    run: str
    path: str
    epochs: int
    steps: int
    seconds: float
    images_per_second: float | None  # None when the run stopped before the warm-up steps ended
    train: dict[str, float]
    test: dict[str, float]  # the test split, scored with the weights model.safetensors holds
    active_units: int
    stopped: str  # 'done', 'max_steps', 'time_budget', 'early_stop', 'interrupted'
    precision: str = "fp32"
    device: str = "cpu"
    summary: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The headline fields as a plain dict."""
        out = asdict(self)
        out.pop("summary")
        return out


def conclude(trainer: Any, s: Session, stopped: str, kept: VAE, test: EvalResult, seconds: float) -> TrainResult:
    """The end of a run (``trainer``: the :class:`~vaecli.train.trainer.Trainer`) as a :class:`TrainResult` with its ``summary`` (checkpoint.build_summary),
    written to summary.json; under DDP the ranks' parameters must agree."""
    st, ips = trainer.state, s.rate()
    trainer.sums.fold(st, distributed.all_reduce_sum)
    train = trainer.sums.means(st) if st.epoch_sums[3] > 0 else dict(trainer.history[-1]["train"]) if trainer.history else {}
    result = TrainResult(
        run=trainer.path.name,
        path=str(trainer.path),
        epochs=st.epoch,
        steps=st.global_step,
        seconds=round(seconds, 3),
        images_per_second=None if ips is None else round(ips, 2),
        train=train,
        test=test.brief(),
        active_units=test.active_units,
        stopped=stopped,
        precision=trainer.precision,
        device=str(trainer.device),
    )
    result.summary = ckpt.build_summary(result.to_dict(), st, run_facts(trainer, s, kept, test))
    if distributed.is_main():
        ckpt.write_summary(trainer.path, result.summary)
    digests = result.summary.get("param_sha256_per_rank", [])
    if len(set(digests)) > 1:
        raise TrainingError(f"the {len(digests)} ranks ended with different parameters (a DDP bug); the checkpoint holds rank 0's")
    return result


def run_facts(trainer: Any, s: Session, kept: VAE, test: EvalResult) -> dict[str, Any]:
    """What summary.json records besides the headline: the test split's per-dimension statistics,
    the likelihood, the held-out sizes, how it ran (threads, layout, DDP)."""
    st, binarize = trainer.state, trainer.cfg.data.binarize
    facts: dict[str, Any] = {
        "test_per_dim_kl": test.per_dim_kl,
        "test_mu_variance": test.mu_variance,
        **({"test_group_kl": test.group_kl, "test_group_active_units": test.group_active_units} if test.group_kl else {}),
        "epochs_done": round(st.progress(s.steps_per_epoch), 4),
        "val_size": len(trainer.val_data),
        "likelihood": kept.likelihood.label(binarize),
        "likelihood_name": kept.likelihood.name,
        "discrete": kept.likelihood.is_discrete(binarize),
        "last_val": trainer.history[-1].get("val") if trainer.history else None,
        "last_epoch": st.epoch,
        "runtime": {
            "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
            "memory_format": "channels_last" if trainer.memory_format == torch.channels_last else "contiguous",
            **trainer.runtime,
        },
        "world_size": distributed.world_size(),
        "effective_batch_size": s.batch_size * distributed.world_size(),
        "notes": list(trainer.notices),
        "hooks": [hook.name for hook in trainer.hooks],
    }
    if kept.likelihood.name == "bernoulli" and not binarize:
        facts["test_bce_floor"] = round(bce_floor(trainer.test_data), 4)
    if distributed.is_distributed():
        facts["param_sha256_per_rank"] = distributed.param_digests(trainer.model)
    return facts
