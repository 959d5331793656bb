"""Configuration dataclasses: the single source of truth, stored as JSON with every run, and the
one rule that chooses the defaults the user did not give (:func:`default_recipe`).

Error messages name the command-line flag of a field (``--latent-dim`` for ``latent_dim``): every
field with a flag maps to it by replacing ``_`` with ``-``, so Python callers read the same
messages; fields without a flag (``warmup_steps`` before it had one, ``world_size``) are named as
fields. This is the one place that says so.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from .errors import ConfigError

ARCHS = ("conv", "mlp", "conv-mlp", "seed")
NORMS = ("none", "group", "batch")
LIKELIHOODS = ("bernoulli", "gaussian")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")
FITS = ("crop", "pad", "stretch")  # how a non-square image of a folder becomes square

DEFAULT_EPOCHS = 10  # epochs of a run given neither --epochs nor --time-budget (plus any ramp, see default_epochs)
BUDGET_EPOCHS = 1000  # epochs of a run given only a --time-budget: the budget ends it
MAX_AUTO_IMAGE_SIZE = 128  # a folder's own image size is capped here unless --max-image-size raises it


# ----------------------------------------------------------------------------- the one rule for defaults
#
# Every default that depends on the data (image size, channels) or the device is chosen here and
# nowhere else. The CLI passes through only what the user gave; ``build_configs`` fills the rest
# from :func:`default_recipe` once the data is loaded. The measurements behind each number are in
# docs/performance.md ("How the defaults are chosen"). ``--arch seed`` keeps the seed's recipe.

SEED_RECIPE: dict[str, Any] = {"batch_size": 128, "lr": 1e-3, "lr_schedule": "constant", "warmup_steps": 0}


# PROVISIONAL, not measured (no GPU yet): a GPU is idle at batch 128 with this small net, so CUDA
# gets batch 1024 with the CPU recipe's lr scaled by sqrt(1024 / 128) and capped at 1e-2, warmed up
# over 100 steps. scripts/gpu_check.sh measures test -ELBO at equal wall time for batch
# 128 / 1024 / 4096; set these numbers from its JSON (docs/performance.md, "GPU").
CUDA_RECIPE: dict[str, Any] = {
    "batch_size": 1024,
    "lr": min(1e-2, 5e-3 * (1024 / 128) ** 0.5),
    "lr_schedule": "cosine",
    "warmup_steps": 100,
}


def conv_stages(image_size: int) -> int:
    """Strided stages of the ``conv`` arch for a side: the fewest that bring the feature map to
    8 px or less (28 -> 2 stages of 7 px, 64 -> 3, 128 -> 4), at least 1 and at most 5."""
    k = 1
    while image_size / 2**k > 8 and k < 5:
        k += 1
    return k


def conv_widths(image_size: int, channels: int) -> tuple[int, ...]:
    """Channels of the ``conv`` stages: doubling per stage from 16, at most 256 (16,32 at 28 px,
    16,32,64 at 64 px, 16,32,64,128 at 128 px). Gray and colour alike: at 64 px colour 16,32,64
    beat 32,64,128 by 256 nats at equal CPU time (docs/performance.md)."""
    del channels
    return tuple(min(256, 16 * 2**i) for i in range(conv_stages(image_size)))


def size_multiple(arch: str | None, widths: tuple[int, ...] | None, size: int) -> int:
    """What an image side must be a multiple of for this arch: 2 ** its strided stages (``seed``: 2,
    ``mlp``: none, conv archs: one per width, or :func:`conv_stages` of ``size`` when no widths are given)."""
    return 2 ** (2 if arch == "seed" else 0 if arch == "mlp" else len(widths) if widths else conv_stages(size))


def accepted_image_size(size: int, arch: str | None = None, widths: tuple[int, ...] | None = None) -> int:
    """``size`` rounded down to the nearest side the architecture accepts."""
    m = size_multiple(arch, widths, size)
    return max(m, (size // m) * m)


def auto_precision(device_type: str, native_bf16: bool) -> str:
    """What ``--precision auto`` means on a device: fp32 everywhere for now. bf16 trailed fp32 by
    2.8 nats at equal steps on the CPU (docs/performance.md, "bf16"); ``native_bf16`` is the
    hook for the rule measured on machines that have it: bf16 only where it gives a better test
    -ELBO at equal wall time (CUDA: scripts/gpu_check.sh measures it; not yet run)."""
    del device_type, native_bf16
    return "fp32"


REFERENCE_FAN_IN = 32 * 7 * 7  # the 28 px conv net's widest layer (1,568 inputs): trains at 5e-3 without a warm-up
WARMUP_STEPS = 100  # linear warm-up of the conv recipes (the mlp's is in MLP_RECIPE; the seed's is 0)


def max_fan_in(arch: str, image_size: int, channels: int, widths: tuple[int, ...], hidden: int, latent_dim: int) -> int:
    """Inputs of the model's widest layer (a k4 conv counts 16 per input channel): Adam moves every
    weight by about lr per step, so a unit's pre-activation moves about lr x fan-in."""
    if arch == "seed":
        return 128 * (image_size // 4) ** 2
    if arch == "mlp":
        return max(channels * image_size * image_size, *widths, latent_dim)
    side = image_size // 2 ** len(widths)
    return max(channels * 16, *(w * 16 for w in widths), widths[-1] * side * side, hidden, latent_dim)


def default_lr(base: float, fan_in: int) -> float:
    """The arch's measured learning rate ``base``, scaled down by sqrt(reference fan-in / fan-in)
    for models whose widest layer is wider than the 28 px conv net's: ``--widths 32,64,128`` at
    64 px colour diverged at step 4 with 5e-3 (fan-in 8,192 -> 2.2e-3 trains)."""
    return min(base, 5e-3 * math.sqrt(REFERENCE_FAN_IN / fan_in))


# Measured on Fashion-MNIST at equal CPU time (docs/performance.md, "How the defaults are chosen").
MLP_RECIPE: dict[str, Any] = {"widths": (512, 512), "batch_size": 128, "lr": 2e-3, "warmup_steps": 0}
CONV_BASE_LR = 5e-3
MLP_MAX_SIDE = 28  # gray images up to this side get the mlp arch by default: it won on Fashion-MNIST


def default_arch(image_size: int, channels: int) -> str:
    """``mlp`` for small gray images (where it measured better per CPU-second than the conv net),
    ``conv`` otherwise (colour and larger images, where the stages follow the size)."""
    return "mlp" if channels == 1 and image_size <= MLP_MAX_SIDE else "conv"


def default_recipe(
    image_size: int, channels: int, device_type: str = "cpu", arch: str | None = None, given: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The defaults for data of this side and channel count on this kind of device: model fields
    (arch, widths, hidden, latent_dim, likelihood, norm) and optimiser fields (batch_size, lr,
    lr_schedule, warmup_steps). ``arch`` given by the user selects that arch's recipe; ``given``
    (the user's other model fields, optional) sizes the learning rate for the model actually built."""
    given = {k: v for k, v in (given or {}).items() if v is not None}
    conv_fields = any(k in given for k in ("widths", "hidden", "norm"))  # --widths alone still means conv stages
    arch = arch or ("conv" if conv_fields else default_arch(image_size, channels))
    # colour: a Gaussian decoder with a learned scale beat the Bernoulli one by 53 BCE nats at 64 px
    # (it puts more information in z in a short budget; docs/performance.md)
    likelihood = "gaussian" if channels == 3 and arch != "seed" else "bernoulli"
    model: dict[str, Any] = {"arch": arch, "latent_dim": 32, "hidden": 512, "likelihood": likelihood, "norm": "none"}
    if arch == "seed":
        return {**model, **SEED_RECIPE}
    if arch == "mlp":
        model["widths"] = MLP_RECIPE["widths"]
        base_lr, batch, warmup = MLP_RECIPE["lr"], MLP_RECIPE["batch_size"], MLP_RECIPE["warmup_steps"]
    else:
        model["widths"] = conv_widths(image_size, channels)
        base_lr, batch, warmup = CONV_BASE_LR, 128 if image_size < 64 else 64, WARMUP_STEPS
    m = {**model, **{k: v for k, v in given.items() if k in model}}
    fan_in = max_fan_in(arch, image_size, channels, tuple(m["widths"]), m["hidden"], m["latent_dim"])
    lr = default_lr(base_lr, fan_in)
    if device_type == "cuda":  # provisional (see CUDA_RECIPE): a larger batch, the lr scaled by sqrt(batch ratio)
        lr = min(CUDA_RECIPE["lr"], lr * (CUDA_RECIPE["batch_size"] / batch) ** 0.5)
        batch, warmup = CUDA_RECIPE["batch_size"], max(warmup, CUDA_RECIPE["warmup_steps"])
    return {**model, "batch_size": batch, "lr": lr, "lr_schedule": "cosine", "warmup_steps": warmup}


def default_epochs(time_budget: float | None, anneal: int = 0, cyclical: int = 0, capacity_epochs: int = 0) -> int:
    """Epochs of a run given no ``--epochs``: until the budget when there is one, else long enough
    to finish a beta or capacity ramp and then train :data:`DEFAULT_EPOCHS` more at full strength
    (``--anneal 30`` -> 40 epochs); ``--cyclical N`` gets at least 2 epochs per cycle."""
    if time_budget is not None:
        return BUDGET_EPOCHS
    if cyclical:
        return max(DEFAULT_EPOCHS, 2 * cyclical)
    return max(anneal, capacity_epochs) + DEFAULT_EPOCHS


def ramp_warning(train: TrainConfig) -> str | None:
    """One line when an explicit ``--epochs`` ends before a ramp finishes, else None."""
    if train.anneal > train.epochs:
        return (
            f"--epochs {train.epochs} ends before --anneal {train.anneal} finishes: beta reaches only "
            f"{train.beta * train.epochs / train.anneal:.3g} of {train.beta:g}"
        )
    if train.capacity and train.capacity_epochs > train.epochs:
        return (
            f"--epochs {train.epochs} ends before --capacity-epochs {train.capacity_epochs}: C reaches only "
            f"{train.capacity * train.epochs / train.capacity_epochs:.3g} of {train.capacity:g} nats"
        )
    if train.cyclical and train.epochs < train.cyclical:
        return f"--cyclical {train.cyclical} over --epochs {train.epochs}: each cycle is shorter than an epoch"
    return None


T = TypeVar("T", bound="_Config")


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _finite(name: str, value: float) -> None:
    _check(isinstance(value, (int, float)) and math.isfinite(value), f"{name} must be a finite number, got {value!r}")


class _Config:
    """JSON round trip with type checks, shared by the config dataclasses."""

    def validate(self) -> None:  # pragma: no cover - overridden
        """Raise :class:`ConfigError` when a value is out of range."""

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of the fields."""
        out = asdict(self)  # type: ignore[call-overload]
        for k, v in out.items():
            if isinstance(v, tuple):
                out[k] = list(v)
        return out

    @classmethod
    def from_dict(cls: type[T], data: Any) -> T:
        """Build from a dict (e.g. ``config.json``), checking types; unknown keys are ignored."""
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        kwargs: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name not in data:
                continue
            v = data[f.name]
            default = (
                f.default
                if f.default is not dataclasses.MISSING
                else f.default_factory()  # type: ignore[misc]
                if f.default_factory is not dataclasses.MISSING
                else None
            )
            if default is None:  # optional field: check against the annotated type
                ann = str(f.type)
                default = 0.0 if "float" in ann else 0 if "int" in ann else "" if "str" in ann else None
            kwargs[f.name] = _coerce(cls.__name__, f.name, v, default)
        obj = cls(**kwargs)
        obj.validate()
        return obj


def _coerce(owner: str, name: str, value: Any, default: Any) -> Any:
    """Check ``value`` against the type of the field's default (None defaults accept anything JSON)."""
    where = f"{owner}.{name}"
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
            raise ConfigError(f"{where} must be a list of integers, got {value!r}")
        return tuple(value)
    return value


@dataclass
class ModelConfig(_Config):
    """Everything needed to rebuild a model: stored with its weights in ``config.json``.

    ``widths`` are the channel counts of the strided conv stages (``conv``, ``conv-mlp``), or
    the widths of the hidden layers of the ``mlp`` arch's encoder (its decoder mirrors them);
    ``hidden`` is the width of the conv archs' fully connected layer (``conv-mlp``: of its MLP
    decoder's two hidden layers); ``norm`` the conv stages' normalisation. The ``seed`` arch
    ignores all three (fixed table).
    """

    arch: str = "conv"
    channels: int = 1
    image_size: int = 28
    latent_dim: int = 32
    widths: tuple[int, ...] = (16, 32)
    hidden: int = 512
    likelihood: str = "bernoulli"
    norm: str = "none"

    def validate(self) -> None:
        _check(self.norm in NORMS, f"unknown norm {self.norm!r} (choose from {', '.join(NORMS)})")
        _check(self.arch in ARCHS, f"unknown arch {self.arch!r} (choose from {', '.join(ARCHS)})")
        _check(self.likelihood in LIKELIHOODS, f"unknown likelihood {self.likelihood!r} (choose from {', '.join(LIKELIHOODS)})")
        _check(self.channels in (1, 3), f"channels must be 1 or 3, got {self.channels}")
        _check(self.latent_dim >= 1, f"--latent-dim must be >= 1, got {self.latent_dim}")
        _check(self.latent_dim <= 4096, f"--latent-dim must be <= 4096, got {self.latent_dim}")
        _check(1 <= self.hidden <= 65536, f"hidden must be 1..65536, got {self.hidden}")
        _check(len(self.widths) >= 1 and all(w >= 1 for w in self.widths), f"widths must be positive, got {list(self.widths)}")
        m = size_multiple(self.arch, self.widths, self.image_size)
        _check(
            8 <= self.image_size <= 512 and self.image_size % m == 0,
            f"--image-size must be a multiple of {m} between 8 and 512 for arch {self.arch}, got {self.image_size}",
        )


@dataclass
class DataConfig(_Config):
    """Which data a run was trained on. ``name`` is a registry name or a folder path."""

    name: str = "fashion-mnist"
    root: str | None = None
    image_size: int | None = None
    channels: int | None = None
    split_seed: int = 0
    binarize: bool = False
    fingerprint: str | None = None
    train_size: int | None = None
    test_size: int | None = None
    # folders of images (docs/own-images.md): the rule their files were converted by, and what was left out
    fit: str = "crop"
    max_image_size: int | None = None  # cap on the detected size (None: MAX_AUTO_IMAGE_SIZE)
    strict: bool = False  # a file that cannot be used is an error, not skipped
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path": relative path, "reason": ...}

    def validate(self) -> None:
        _check(bool(self.name), "--data must not be empty")
        _check(self.fit in FITS, f"--fit must be one of {', '.join(FITS)}, got {self.fit!r}")
        if self.max_image_size is not None:
            _check(8 <= self.max_image_size <= 512, f"--max-image-size must be between 8 and 512, got {self.max_image_size}")
        _check(
            isinstance(self.skipped, list) and all(isinstance(s, dict) and isinstance(s.get("path"), str) for s in self.skipped),
            "skipped must be a list of {path, reason} objects",
        )
        if self.image_size is not None:
            _check(self.image_size >= 1, f"--image-size must be >= 1, got {self.image_size}")
        if self.channels is not None:
            _check(self.channels in (1, 3), f"--channels must be 1 or 3, got {self.channels}")


@dataclass
class TrainConfig(_Config):
    """Optimisation settings of ``vae train``. The field defaults are the 28 px ``conv`` recipe;
    ``vae train`` takes the ones the user did not give from :func:`default_recipe`."""

    beta: float = 1.0
    anneal: int = 0
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = 128
    lr: float = 5e-3
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    max_steps: int | None = None
    time_budget: float | None = None
    save_every: float = 300.0
    skip_nonfinite: bool = False
    world_size: int = 1
    # other objectives and schedules; 0 = off
    cyclical: int = 0  # cyclical beta annealing, number of cycles (Fu et al. 2019)
    capacity: float = 0.0  # capacity annealing C_max in nats (Burgess et al. 2018)
    capacity_epochs: int = 0  # epochs for C to reach C_max (0 = the whole run)
    free_bits: float = 0.0  # free bits per latent dimension, nats (Kingma et al. 2016)
    tc_beta: float = 0.0  # weight of the total correlation (beta-TCVAE, Chen et al. 2018)

    def validate(self) -> None:
        _finite("--beta", self.beta)
        _check(self.beta >= 0, f"--beta must be >= 0, got {self.beta}")
        _check(self.anneal >= 0, f"--anneal must be >= 0, got {self.anneal}")
        _check(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
        _check(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        _finite("--lr", self.lr)
        _check(0 < self.lr <= 10, f"--lr must be > 0 and <= 10 (Adam), got {self.lr}")  # 1e38 overflows Adam's float32 step
        _check(self.lr_schedule in ("constant", "cosine"), f"--lr-schedule must be constant or cosine, got {self.lr_schedule!r}")
        _check(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        _finite("--grad-clip", self.grad_clip)
        _check(self.grad_clip >= 0, f"--grad-clip must be >= 0 (0 = off), got {self.grad_clip}")
        _check(self.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        _check(self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.max_steps is not None:
            _check(self.max_steps >= 1, f"--max-steps must be >= 1, got {self.max_steps}")
        if self.time_budget is not None:
            _finite("--time-budget", self.time_budget)
            _check(self.time_budget > 0, f"--time-budget must be > 0, got {self.time_budget}")
        _finite("--save-every", self.save_every)
        _check(self.save_every > 0, f"--save-every must be > 0, got {self.save_every}")
        _check(self.world_size >= 1, f"world_size must be >= 1, got {self.world_size}")
        _check(self.cyclical >= 0, f"--cyclical must be >= 0, got {self.cyclical}")
        _check(not (self.cyclical and self.anneal), "--cyclical and --anneal are two beta schedules: choose one")
        _check(self.capacity_epochs >= 0, f"--capacity-epochs must be >= 0, got {self.capacity_epochs}")
        for flag, v in (("--capacity", self.capacity), ("--free-bits", self.free_bits), ("--tc-beta", self.tc_beta)):
            _finite(flag, v)
            _check(v >= 0, f"{flag} must be >= 0, got {v}")
        used = [f for f, v in (("--capacity", self.capacity), ("--free-bits", self.free_bits), ("--tc-beta", self.tc_beta)) if v]
        _check(len(used) <= 1, f"{' and '.join(used)} each change the KL term: choose one")


@dataclass
class RunConfig(_Config):
    """Everything ``config.json`` holds: the three configs plus provenance."""

    name: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    created: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    format: int = 1

    def validate(self) -> None:
        self.model.validate()
        self.data.validate()
        self.train.validate()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "name": self.name,
            "created": self.created,
            "versions": dict(self.versions),
            "model": self.model.to_dict(),
            "data": self.data.to_dict(),
            "train": self.train.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Any) -> RunConfig:
        if not isinstance(data, dict):
            raise ConfigError("config.json: expected a JSON object")
        if data.get("format") != 1:
            raise ConfigError(f"config.json: unsupported format {data.get('format')!r}")
        for key in ("model", "data", "train"):
            if key not in data:
                raise ConfigError(f"config.json: missing {key!r}")
        name = data.get("name", "")
        created = data.get("created", "")
        versions = data.get("versions", {})
        if not isinstance(name, str) or not isinstance(created, str) or not isinstance(versions, dict):
            raise ConfigError("config.json: name, created and versions have the wrong types")
        cfg = cls(
            name=name,
            created=created,
            versions={str(k): str(v) for k, v in versions.items()},
            model=ModelConfig.from_dict(data["model"]),
            data=DataConfig.from_dict(data["data"]),
            train=TrainConfig.from_dict(data["train"]),
        )
        return cfg


MODEL_FIELDS = frozenset(f.name for f in fields(ModelConfig)) - {"image_size", "channels"}
TRAIN_FIELDS = frozenset(f.name for f in fields(TrainConfig))


def check_given(given: dict[str, Any]) -> None:
    """Validate the options a user gave before any data is loaded (a bad flag fails fast)."""
    given = {k: v for k, v in given.items() if v is not None}
    unknown = set(given) - MODEL_FIELDS - TRAIN_FIELDS
    _check(not unknown, f"unknown options {sorted(unknown)}")
    TrainConfig(**{k: v for k, v in given.items() if k in TRAIN_FIELDS}).validate()
    model = {k: v for k, v in given.items() if k in MODEL_FIELDS}
    ModelConfig(**model, image_size=8 * size_multiple(model.get("arch"), model.get("widths") or (1,), 8)).validate()


def build_configs(given: dict[str, Any], image_size: int, channels: int, device_type: str = "cpu") -> tuple[ModelConfig, TrainConfig]:
    """The run's model and training configs: what the user gave (``None`` = not given) over the
    rule's defaults for this data and device (:func:`default_recipe`, :func:`default_epochs`)."""
    given = {k: v for k, v in given.items() if v is not None}
    check_given(given)
    merged = {**default_recipe(image_size, channels, device_type, given.get("arch"), given), **given}
    if "epochs" not in given:
        merged["epochs"] = default_epochs(
            merged.get("time_budget"), merged.get("anneal", 0), merged.get("cyclical", 0), merged.get("capacity_epochs", 0)
        )
    model = ModelConfig(**{k: v for k, v in merged.items() if k in MODEL_FIELDS}, image_size=image_size, channels=channels)
    train = TrainConfig(**{k: v for k, v in merged.items() if k in TRAIN_FIELDS})
    model.validate()
    train.validate()
    return model, train
