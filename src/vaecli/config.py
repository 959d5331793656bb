"""Configuration dataclasses: the single source of truth, stored as JSON with every run.

The defaults ``vae train`` fills in for what the user did not give come from one rule,
:mod:`vaecli.train.recipe`. The field defaults here are construction defaults for Python callers (the
28 px ``conv`` model), not the rule's choice for any data.

Error messages name the command-line flag of a field (``--latent-dim`` for ``latent_dim``): every
field with a flag maps to it by replacing ``_`` with ``-``, so Python callers read the same
messages; fields without a flag (``world_size``) are named as fields.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from .errors import ConfigError

ARCHS = ("conv", "mlp", "conv-mlp", "seed", "spatial", "hvae")
# The fields each arch reads besides those all read (channels, image_size, latent_dim, likelihood,
# prior and theirs): vaecli.model.vae's builder of each arch reads these and no other
# (tests/test_model.py checks it), and a flag of another field is refused with that arch.
ARCH_FIELDS: dict[str, frozenset[str]] = {
    "conv": frozenset({"widths", "hidden", "norm", "blocks", "upsample"}),
    "mlp": frozenset({"widths"}),
    "conv-mlp": frozenset({"widths", "hidden", "norm", "blocks"}),  # its MLP decoder: no upsampling
    "seed": frozenset(),  # the seed document's fixed layer table
    "spatial": frozenset({"widths", "norm", "blocks", "upsample"}),  # no fully connected layer
    "hvae": frozenset({"widths", "hidden", "blocks", "upsample", "groups"}),  # hierarchical: a top vector, spatial groups below
}
NORMS = ("none", "group", "batch")
LIKELIHOODS = ("bernoulli", "gaussian", "logistic", "discrete-gaussian")
PRIORS = ("normal", "vamp")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")
FITS = ("crop", "pad", "stretch")  # how a non-square image of a folder becomes square

T = TypeVar("T", bound="_Config")

MAX_AUTO_IMAGE_SIZE = 128  # a folder's own image size is capped here unless --max-image-size raises it


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _finite(name: str, value: float) -> None:
    _check(isinstance(value, (int, float)) and math.isfinite(value), f"{name} must be a finite number, got {value!r}")


def size_multiple(arch: str, widths: tuple[int, ...]) -> int:
    """What an image side must be a multiple of for this arch: 2 ** its strided stages (``seed``: 2,
    ``mlp``: none, conv archs: one per width)."""
    return 2 ** (2 if arch == "seed" else 0 if arch == "mlp" else len(widths))


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
        """Build from a dict (e.g. ``config.json``), checking each value against its field's
        annotated type (:func:`typing.get_type_hints`); unknown keys are ignored."""
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        kwargs = {f.name: _coerce(f"{cls.__name__}.{f.name}", data[f.name], hints[f.name]) for f in fields(cls) if f.name in data}  # type: ignore[arg-type]
        obj = cls(**kwargs)
        obj.validate()
        return obj


def _coerce(where: str, value: Any, hint: Any) -> Any:
    """``value`` (from JSON) checked against the type ``hint``: bool, int, float (ints accepted),
    str, ``X | None``, ``tuple[int, ...]`` (from a list), ``list[...]`` and ``dict[...]`` (shallow)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(where, value, inner)
    if hint is bool:
        _check(isinstance(value, bool), f"{where} must be true or false, got {value!r}")
    elif hint is int:
        _check(isinstance(value, int) and not isinstance(value, bool), f"{where} must be an integer, got {value!r}")
    elif hint is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), f"{where} must be a number, got {value!r}")
        return float(value)
    elif hint is str:
        _check(isinstance(value, str), f"{where} must be a string, got {value!r}")
    elif origin is tuple:
        ok = isinstance(value, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in value)
        _check(ok, f"{where} must be a list of integers, got {value!r}")
        return tuple(value)
    elif origin is list:
        _check(isinstance(value, list), f"{where} must be a list, got {value!r}")
    elif origin is dict:
        _check(isinstance(value, dict), f"{where} must be an object, got {value!r}")
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
    mixtures: int = 1  # components of the discretised logistic mixture (likelihood logistic)
    logistic_scale: str = "pixel"  # likelihood logistic: a scale per pixel (predicted) or one per channel, "shared" (learned)
    blocks: int = 0  # residual blocks after each conv stage, encoder and decoder (conv archs)
    upsample: str = "transposed"  # the conv decoder's stages: transposed (k4 s2) convs, or resize (nearest x2 + 3x3 conv)
    prior: str = "normal"  # p(z): normal (N(0, I)) or vamp (the VampPrior of pseudo_inputs learned pseudo-inputs)
    pseudo_inputs: int = 500  # K of the VampPrior
    groups: tuple[int, ...] = (8, 4)  # hvae: channels of the spatial latent groups, one per conv stage, deepest first (0: none there)

    def validate(self) -> None:
        _check(self.norm in NORMS, f"unknown norm {self.norm!r} (choose from {', '.join(NORMS)})")
        _check(self.arch in ARCHS, f"unknown arch {self.arch!r} (choose from {', '.join(ARCHS)})")
        _check(self.likelihood in LIKELIHOODS, f"unknown likelihood {self.likelihood!r} (choose from {', '.join(LIKELIHOODS)})")
        _check(self.channels in (1, 3), f"channels must be 1 or 3, got {self.channels}")
        _check(1 <= self.mixtures <= 32, f"--mixtures must be 1..32, got {self.mixtures}")
        _check(self.logistic_scale in ("pixel", "shared"), f"--logistic-scale must be pixel or shared, got {self.logistic_scale!r}")
        _check(
            self.likelihood != "logistic" or self.logistic_scale == "pixel" or self.mixtures == 1,
            f"--mixtures {self.mixtures} needs --logistic-scale pixel (shared: one logistic per pixel, one learned scale per channel)",
        )
        _check(0 <= self.blocks <= 8, f"--blocks must be 0..8, got {self.blocks}")
        _check(self.upsample in ("transposed", "resize"), f"--upsample must be transposed or resize, got {self.upsample!r}")
        _check(self.prior in PRIORS, f"--prior must be one of {', '.join(PRIORS)}, got {self.prior!r}")
        _check(1 <= self.pseudo_inputs <= 10_000, f"--pseudo-inputs must be 1..10000, got {self.pseudo_inputs}")
        _check(self.latent_dim >= 1, f"--latent-dim must be >= 1, got {self.latent_dim}")
        _check(self.latent_dim <= 4096, f"--latent-dim must be <= 4096, got {self.latent_dim}")
        _check(1 <= self.hidden <= 65536, f"hidden must be 1..65536, got {self.hidden}")
        _check(len(self.widths) >= 1 and all(w >= 1 for w in self.widths), f"widths must be positive, got {list(self.widths)}")
        m = size_multiple(self.arch, self.widths)
        _check(
            8 <= self.image_size <= 512 and self.image_size % m == 0,
            f"--image-size must be a multiple of {m} between 8 and 512 for arch {self.arch}, got {self.image_size}",
        )
        if self.arch == "hvae":
            _check(1 <= len(self.groups) <= len(self.widths) and all(0 <= c <= 64 for c in self.groups) and any(self.groups),
                   f"--groups must be 1 to {len(self.widths)} (one per stage of --widths) channel counts 0..64, not all 0, "
                   f"got {','.join(map(str, self.groups))}")  # fmt: skip
        if self.arch == "spatial":  # after the size check: the latent maps have at least one position
            cells = (self.image_size // m) ** 2
            _check(self.latent_dim % cells == 0, f"--latent-dim must be a multiple of {cells} for arch spatial at {self.image_size} px "
                   f"({len(self.widths)} stages: latent maps of {cells} positions; --arch conv takes any size), got {self.latent_dim}")  # fmt: skip

    @classmethod
    def from_dict(cls, data: Any) -> ModelConfig:
        """As :meth:`_Config.from_dict`; a config.json written when ``--logistic-scale shared`` took
        any ``--mixtures`` and used one component says the one it used."""
        if isinstance(data, dict) and data.get("likelihood") == "logistic" and data.get("logistic_scale") == "shared":
            data = {**data, "mixtures": 1}
        return super().from_dict(data)


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
    # images carved out of the training split (by split_seed) to choose the model: the per-epoch
    # evaluation, the best weights and --early-stop use them; None: by the rule (recipe.validation_size)
    val_size: int | None = None

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
        if self.val_size is not None:
            _check(self.val_size >= 0, f"--val-size must be >= 0 (0 = no validation split), got {self.val_size}")


@dataclass
class TrainConfig(_Config):
    """Optimisation settings of ``vae train``. Field defaults are construction defaults (the 28 px
    ``conv`` recipe); ``vae train`` takes the ones the user did not give from :mod:`vaecli.train.recipe`."""

    beta: float = 1.0
    anneal: int = 0
    epochs: int = 10
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
    max_nonfinite: int = 3  # the run stops at its Nth non-finite step; each earlier one is rolled back, lr halved
    early_stop: int = 0  # stop after N evaluations without a better validation -ELBO (0 = off)
    ema: float = 0.0  # decay of the exponential moving average of the weights that is evaluated and saved (0 = off)
    fit_prior: str | None = None  # after training: fit a prior of this kind (gmm | flow; none: no fit) to the encoded training images
    eval_samples: bool = False  # after training: score samples as `vae eval-samples` does (summary.json eval_samples)
    world_size: int = 1
    # other objectives and schedules; 0 = off
    cyclical: int = 0  # cyclical beta annealing, number of cycles (Fu et al. 2019)
    capacity: float = 0.0  # capacity annealing C_max in nats (Burgess et al. 2018)
    capacity_epochs: int = 0  # epochs for C to reach C_max (0 = the whole run)
    free_bits: float = 0.0  # free bits per latent dimension, nats (Kingma et al. 2016)
    tc_beta: float = 0.0  # weight of the total correlation (beta-TCVAE, Chen et al. 2018)
    top_first: int = 0  # hvae: epochs over which the spatial groups' KL weight falls from TOP_FIRST_WEIGHT to 1
    # TensorBoard logging (vaecli.train.hooks.TensorBoard): its folder, relative to the run folder
    # unless absolute (None = off), and the epochs between image grids (0 = no images)
    tensorboard: str | None = None
    log_images_every: int = 1

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
        _check(self.max_nonfinite >= 1, f"--max-nonfinite must be >= 1 (1 = stop at the first), got {self.max_nonfinite}")
        _check(self.early_stop >= 0, f"--early-stop must be >= 0 (0 = off), got {self.early_stop}")
        _finite("--ema", self.ema)
        _check(0 <= self.ema < 1, f"--ema must be in [0, 1) (0 = off), got {self.ema}")
        _check(self.cyclical >= 0, f"--cyclical must be >= 0, got {self.cyclical}")
        _check(not (self.cyclical and self.anneal), "--cyclical and --anneal are two beta schedules: choose one")
        _check(self.capacity_epochs >= 0, f"--capacity-epochs must be >= 0, got {self.capacity_epochs}")
        _check(self.top_first >= 0, f"--top-first must be >= 0 (0 = off), got {self.top_first}")
        for flag, v in (("--capacity", self.capacity), ("--free-bits", self.free_bits), ("--tc-beta", self.tc_beta)):
            _finite(flag, v)
            _check(v >= 0, f"{flag} must be >= 0, got {v}")
        used = [f for f, v in (("--capacity", self.capacity), ("--free-bits", self.free_bits), ("--tc-beta", self.tc_beta)) if v]
        _check(len(used) <= 1, f"{' and '.join(used)} each change the KL term: choose one")
        _check(self.tensorboard is None or bool(self.tensorboard), "--tensorboard-dir must not be empty")
        _check(self.log_images_every >= 0, f"--log-images-every must be >= 0 (0 = no images), got {self.log_images_every}")


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
        check_pair(self.model, self.train)

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


def check_pair(model: ModelConfig, train: TrainConfig, arch_source: str = "given") -> None:
    """Settings of the model and the objective that do not go together. ``arch_source``: where the
    model's arch came from, ``given`` or ``default`` (for the message), or ``unknown`` (not decided
    yet: the data decides it; what depends on it is checked then)."""
    if model.prior != "normal":
        used = [f for f, v in (("--free-bits", train.free_bits), ("--tc-beta", train.tc_beta)) if v]
        _check(not used, f"{' and '.join(used)} need a prior that factorises over dimensions: not with --prior {model.prior}")
    if arch_source != "unknown":
        _check(not train.top_first or model.arch == "hvae", f"--top-first weighs the latent groups of --arch hvae: not read by "
               f"--arch {model.arch}{' (the default for this data)' if arch_source == 'default' else ''}")  # fmt: skip


# The model fields that only some settings read: field -> {setting: the values of it that read the field}.
READ_UNDER: dict[str, dict[str, tuple[str, ...]]] = {
    **{f: {"arch": tuple(a for a in ARCHS if f in ARCH_FIELDS[a])} for f in sorted(frozenset().union(*ARCH_FIELDS.values()))},
    "mixtures": {"likelihood": ("logistic",), "logistic_scale": ("pixel",)},
    "logistic_scale": {"likelihood": ("logistic",)},
    "pseudo_inputs": {"prior": ("vamp",)},
}
_WHAT = {("arch", "seed"): "a fixed layer table", ("logistic_scale", "shared"): "one logistic per pixel, one learned scale per channel"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def unread_by(settings: dict[str, Any], name: str) -> tuple[str, Any] | None:
    """The (setting, value) of the model of ``settings`` that makes it not read field ``name``
    (``("arch", "mlp")`` for ``blocks``), or None when it reads it (or may: a setting not known yet)."""
    for setting, readers in READ_UNDER.get(name, {}).items():
        value = settings.get(setting)
        if value is not None and value not in readers:
            return setting, value
    return None


def check_read(settings: dict[str, Any], given: Collection[str], default: str = "the default") -> None:
    """Refuse an option the user gave (a field named in ``given``) that the model of ``settings``
    (its arch, likelihood, logistic_scale and prior, those known so far) does not read, in one line:
    ``--blocks is not read by --arch mlp (the default ...): give --arch conv, conv-mlp or spatial``.
    ``default`` says where a setting the user did not give came from."""
    for name in sorted(given):
        unread = unread_by(settings, name)
        if unread is None:
            continue
        setting, value = unread
        why = "; ".join(w for w in (_WHAT.get((setting, value)), None if setting in given else default) if w)
        choices = " or ".join(", ".join(READ_UNDER[name][setting]).rsplit(", ", 1))
        where = f" ({why})" if why else ""
        raise ConfigError(f"{_flag(name)} is not read by {_flag(setting)} {value}{where}: give {_flag(setting)} {choices}")


def check_given(given: dict[str, Any]) -> None:
    """Validate the options a user gave before any data is loaded (a bad flag fails fast)."""
    given = {k: v for k, v in given.items() if v is not None}
    unknown = set(given) - MODEL_FIELDS - TRAIN_FIELDS
    _check(not unknown, f"unknown options {sorted(unknown)}")
    TrainConfig(**{k: v for k, v in given.items() if k in TRAIN_FIELDS}).validate()
    model = {k: v for k, v in given.items() if k in MODEL_FIELDS}
    # the arch and the likelihood may come from the data (the rule for defaults): checked then
    check_read({"logistic_scale": ModelConfig.logistic_scale, "prior": ModelConfig.prior, **model}, model)
    arch = model.get("arch", "conv")
    size = 8 * size_multiple(arch, model.get("widths") or (1,))
    if arch == "spatial":  # its latent size is a multiple of the maps' positions, known with the data: checked then
        if "latent_dim" in model:
            ModelConfig(latent_dim=model["latent_dim"]).validate()  # only its range here
        model["latent_dim"] = (size // size_multiple(arch, model.get("widths") or ModelConfig.widths)) ** 2
    m = ModelConfig(**model, image_size=size)
    m.validate()
    train = TrainConfig(**{k: v for k, v in given.items() if k in TRAIN_FIELDS})
    check_pair(m, train, "given" if "arch" in model else "unknown")  # the arch from the data: checked again then
