"""The one rule that chooses every default the user did not give, keyed on the data (image size,
channels) and the device. The CLI passes through only what the user gave (``None`` = not given);
:func:`build_configs` fills the rest from :func:`default_recipe` once the data is loaded.

The measurements behind each number are in docs/performance.md ("How the defaults are chosen").
``--arch seed`` keeps the seed document's recipe.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

from ..config import ARCH_FIELDS, MODEL_FIELDS, TRAIN_FIELDS, ModelConfig, TrainConfig, check_given, check_pair, check_read, size_multiple

DEFAULT_EPOCHS = 10  # epochs of a run given neither --epochs nor --time-budget (plus any ramp, see default_epochs)
BUDGET_EPOCHS = 1000  # epochs of a run given only a --time-budget: the budget ends it

SEED_RECIPE: dict[str, Any] = {"batch_size": 128, "lr": 1e-3, "lr_schedule": "constant", "warmup_steps": 0}

# Measured on Fashion-MNIST at equal CPU time (docs/performance.md, "How the defaults are chosen").
MLP_RECIPE: dict[str, Any] = {"widths": (512, 512), "batch_size": 128, "lr": 2e-3, "warmup_steps": 0}
MLP_MAX_SIDE = 28  # gray images up to this side get the mlp arch by default: it won on Fashion-MNIST
CONV_BASE_LR = 5e-3
COLOUR_LATENT, COLOUR_BLOCKS = (
    64,
    1,
)  # colour, --arch conv (and hvae's top latent): a flat latent of 64 dimensions, 1 residual block a stage
COLOUR_PRIOR = "gmm"  # colour runs fit a Gaussian mixture to the encoded training images after training (--fit-prior none: off)
HVAE_BLOCKS = 1  # --arch hvae: residual blocks a stage; its top latent: 32 dimensions for gray, COLOUR_LATENT for colour
HVAE_GROUPS = (8, 4)  # --arch hvae, gray: latent channels of the spatial groups at the two deepest stages
HVAE_COLOUR_GROUPS = (8,)  # --arch hvae, colour: one group at the deepest stage (120 s on noto-emoji-64: sample FD 253
# against 295 with a second group at 16x16 below it, 1,000 samples, 4.35 against 4.38 bits/dim;
# benchmarks/results/bench_hvae_explore_120.json, docs/hierarchical.md)
HVAE_TOP_FIRST = 8  # hvae (the colour default): epochs over which the groups' KL weight falls to 1 (--top-first)
SPATIAL_MAPS = 8  # --arch spatial: latent maps at the last stage's side (512 dims: 25.1 dB, 256: 22.8, 1024: 25.3 at 64 px)
CONV_WARMUP_STEPS = 100  # linear learning-rate warm-up of the conv recipes
REFERENCE_FAN_IN = 32 * 7 * 7  # the 28 px conv net's widest layer (1,568 inputs): trains at 5e-3 without a warm-up

# CUDA: not measured on a GPU yet (scripts/gpu_check.sh measures test -ELBO at equal wall time for
# batch 128 / 1024 / 4096). A GPU idles at batch 128 with these small nets, so CUDA gets batch 1024
# with the CPU recipe's lr scaled by sqrt(1024 / batch), capped at 1e-2, warmed up over 100 steps.
CUDA_BATCH, CUDA_MAX_LR, CUDA_WARMUP_STEPS = 1024, 1e-2, 100


def conv_stages(image_size: int) -> int:
    """Strided stages of the ``conv`` arch for a side: the fewest that bring the feature map to
    8 px or less (28 -> 2 stages of 7 px, 64 -> 3, 128 -> 4), at least 1 and at most 5."""
    k = 1
    while image_size / 2**k > 8 and k < 5:
        k += 1
    return k


def conv_widths(image_size: int) -> tuple[int, ...]:
    """Channels of the ``conv`` stages: doubling per stage from 16, at most 256 (16,32 at 28 px,
    16,32,64 at 64 px, 16,32,64,128 at 128 px). Gray and colour alike: at 64 px colour 16,32,64
    beat 32,64,128 by 256 nats at equal CPU time (docs/performance.md)."""
    return tuple(min(256, 16 * 2**i) for i in range(conv_stages(image_size)))


def accepted_image_size(size: int, arch: str | None = None, widths: tuple[int, ...] | None = None) -> int:
    """``size`` rounded down to the nearest side the architecture accepts (the default arch's
    stages for ``size`` when neither ``arch`` nor ``widths`` is given)."""
    if arch in (None, "conv", "conv-mlp", "spatial", "hvae") and not widths:
        widths = conv_widths(size)
    m = size_multiple(arch or "conv", widths or (1,))
    return max(m, (size // m) * m)


def default_arch(image_size: int, channels: int) -> str:
    """``mlp`` for small gray images (where it measured better per CPU-second than the conv net),
    ``conv`` for larger gray ones, ``hvae`` for colour: a top latent of :data:`COLOUR_LATENT`
    dimensions with a fitted Gaussian mixture drawn from and one spatial group below it
    (docs/hierarchical.md), chosen by its samples and reconstructions together on the emoji folder at
    600 s (benchmarks/results/bench_colour_default.json, docs/own-images.md): samples as good as the
    flat latent's (FD in MobileNetV2 features) with reconstructions 5 dB sharper, where the spatial
    latent, as sharp, draws colour blobs."""
    if channels == 1:
        return "mlp" if image_size <= MLP_MAX_SIDE else "conv"
    return "hvae"


def max_fan_in(arch: str, image_size: int, channels: int, widths: tuple[int, ...], hidden: int, latent_dim: int) -> int:
    """Inputs of the model's widest layer (a k4 conv counts 16 per input channel): Adam moves every
    weight by about lr per step, so a unit's pre-activation moves about lr x fan-in."""
    if arch == "seed":
        return 128 * (image_size // 4) ** 2
    if arch == "mlp":
        return max(channels * image_size * image_size, *widths, latent_dim)
    side = max(1, image_size // 2 ** len(widths))  # 0 for an image smaller than the stages: the config check says so
    if arch == "spatial":  # no fully connected layer: the widest conv
        return max(channels * 16, *(w * 16 for w in widths), 9 * max(1, latent_dim // (side * side)))
    return max(channels * 16, *(w * 16 for w in widths), widths[-1] * side * side, hidden, latent_dim)


def default_lr(base: float, fan_in: int) -> float:
    """The arch's measured learning rate ``base``, scaled down by sqrt(reference fan-in / fan-in)
    for models whose widest layer is wider than the 28 px conv net's: ``--widths 32,64,128`` at
    64 px colour diverged at step 4 with 5e-3 (fan-in 8,192 -> 2.2e-3 trains)."""
    return min(base, CONV_BASE_LR * math.sqrt(REFERENCE_FAN_IN / fan_in))


def default_likelihood(channels: int, arch: str) -> str:
    """The decoder's likelihood: Bernoulli (the seed's BCE) for gray images and ``--arch seed``;
    for colour the discretised Gaussian, a likelihood of the 8-bit image (bits per dimension) whose
    reconstructions measured sharper than the discretised logistic's at equal CPU time (25.1 against
    23.5 dB held-out PSNR; the logistic's loss grows like the absolute error)."""
    return "discrete-gaussian" if channels == 3 and arch != "seed" else "bernoulli"


def default_recipe(
    image_size: int, channels: int, device_type: str = "cpu", arch: str | None = None, given: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The defaults for data of this side and channel count on this kind of device: model fields
    (arch, widths, hidden, latent_dim, likelihood, norm) and optimiser fields (batch_size, lr,
    lr_schedule, warmup_steps). ``arch`` given by the user selects that arch's recipe; ``given``
    (the user's other model fields, optional) sizes the learning rate for the model actually built."""
    given = {k: v for k, v in (given or {}).items() if v is not None}
    if arch is None:  # a conv-net field the default arch does not read means the flat-latent conv net: --hidden or
        arch = default_arch(image_size, channels)  # --norm for the mlp, --norm for hvae; --widths means conv stages (not the mlp's)
        flat_only = ({"hidden", "norm"} - ARCH_FIELDS[arch]) | ({"widths"} if arch == "mlp" else set())
        if any(k in given for k in flat_only):
            arch = "conv"
    model: dict[str, Any] = {
        "arch": arch,
        "latent_dim": 32,
        "hidden": 512,
        "likelihood": default_likelihood(channels, arch),
        "norm": "none",
    }
    if arch == "seed":
        return {**model, **SEED_RECIPE}
    if arch == "mlp":
        model["widths"] = MLP_RECIPE["widths"]
        base_lr, batch, warmup = MLP_RECIPE["lr"], MLP_RECIPE["batch_size"], MLP_RECIPE["warmup_steps"]
    else:
        model["widths"] = conv_widths(image_size)
        base_lr, batch, warmup = CONV_BASE_LR, 128 if image_size < 64 else 64, CONV_WARMUP_STEPS
        if channels == 3 and arch == "conv":  # the flat colour net (the colour default before hvae)
            model.update(latent_dim=COLOUR_LATENT, blocks=COLOUR_BLOCKS)
        if arch == "hvae":
            top = COLOUR_LATENT if channels == 3 else 32
            groups = HVAE_COLOUR_GROUPS if channels == 3 else HVAE_GROUPS
            model.update(latent_dim=top, blocks=HVAE_BLOCKS, groups=groups[: len(given.get("widths") or model["widths"])])
        if arch == "spatial":  # latent maps of the last stage's side: SPATIAL_MAPS of them
            side = max(1, image_size // 2 ** len(given.get("widths") or model["widths"]))
            model["latent_dim"] = SPATIAL_MAPS * side * side
    m = {**model, **{k: v for k, v in given.items() if k in model}}
    lr = default_lr(base_lr, max_fan_in(arch, image_size, channels, tuple(m["widths"]), m["hidden"], m["latent_dim"]))
    if device_type == "cuda":
        lr = min(CUDA_MAX_LR, lr * (CUDA_BATCH / batch) ** 0.5)
        batch, warmup = CUDA_BATCH, max(warmup, CUDA_WARMUP_STEPS)
    prior = {"fit_prior": COLOUR_PRIOR} if channels == 3 and arch != "seed" else {}  # vae sample then draws from it
    hier = {"top_first": HVAE_TOP_FIRST} if arch == "hvae" and channels == 3 else {}  # colour: global structure in the top latent
    return {**model, "batch_size": batch, "lr": lr, "lr_schedule": "cosine", "warmup_steps": warmup, **prior, **hier}


# archs whose held-out figure measured better in bf16 than in fp32 at equal wall time on a CPU with
# native bf16 (docs/performance.md, "bf16 on CPUs that have it"): the 64 px spatial net (the colour default then), 120 s on
# 2 cores of an AVX-512-BF16/AMX Xeon, 24.55 against 24.25 dB held-out PSNR, 4.062 against 4.087
# bits/dim (982 against 882 img/s); the 64 px hvae (the colour default), 120 s on 2 cores of an AMD EPYC with
# avx512_bf16, 22.24 against 21.12 dB, 4.218 against 4.328 bits/dim, sample FD 232.9 against 242.1 (489 against
# 368 img/s; benchmarks/results/bench_bf16_hvae_120.json). The 28 px mlp lost there (236.06 against 235.73 nats:
# autocast costs more than it saves on its small matmuls), so it stays fp32; other archs are not measured.
BF16_ARCHS_NATIVE_CPU = frozenset({"spatial", "hvae"})


def auto_precision(model: ModelConfig | None, device_type: str, native_bf16: bool) -> str:
    """What ``--precision auto`` means for a model on a device: bf16 only where it measured a better
    held-out figure at equal wall time (:data:`BF16_ARCHS_NATIVE_CPU` on CPUs with native bf16);
    fp32 everywhere else (emulated bf16 is 7x slower; GPUs are not measured yet)."""
    if device_type == "cpu" and native_bf16 and model is not None and model.arch in BF16_ARCHS_NATIVE_CPU:
        return "bf16"
    return "fp32"


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


def build_configs(given: dict[str, Any], image_size: int, channels: int, device_type: str = "cpu") -> tuple[ModelConfig, TrainConfig]:
    """The run's model and training configs: what the user gave (``None`` = not given) over the
    rule's defaults for this data and device (:func:`default_recipe`, :func:`default_epochs`). An
    option the model does not read (``--blocks`` where the arch is ``mlp``) is refused."""
    given = {k: v for k, v in given.items() if v is not None}
    check_given(given)
    merged = {**default_recipe(image_size, channels, device_type, given.get("arch"), given), **given}
    settings = {k: v for k, v in {**ModelConfig().to_dict(), **merged}.items() if k in MODEL_FIELDS}
    check_read(
        settings, [k for k in given if k in MODEL_FIELDS], f"the default for {image_size} px {'gray' if channels == 1 else 'colour'} images"
    )
    if "epochs" not in given:
        merged["epochs"] = default_epochs(
            merged.get("time_budget"), merged.get("anneal", 0), merged.get("cyclical", 0), merged.get("capacity_epochs", 0)
        )
    model = ModelConfig(**{k: v for k, v in merged.items() if k in MODEL_FIELDS}, image_size=image_size, channels=channels)
    train = TrainConfig(**{k: v for k, v in merged.items() if k in TRAIN_FIELDS})
    model.validate()
    train.validate()
    check_pair(model, train, "given" if "arch" in given else "default")
    return model, train


VAL_FRACTION, MAX_VAL_SIZE = 0.1, 5000  # the validation split: 10% of the training split, at most 5,000 images


def validation_size(n_train: int) -> int:
    """Images carved out of a training split of ``n_train`` to choose the model by: 10%, at most
    5,000 (Fashion-MNIST: 5,000 of 60,000, the usual choice); none below 10 images."""
    return 0 if n_train < 10 else min(MAX_VAL_SIZE, max(1, round(n_train * VAL_FRACTION)))


def resolve_precision(requested: str, device: torch.device, model: ModelConfig | None = None) -> str:
    """``auto`` -> what the rule for defaults chooses for this model on this device
    (:func:`auto_precision`); bf16 on MPS is refused."""
    from ..device import native_bf16
    from ..errors import DeviceError

    if requested != "auto":
        if requested == "bf16" and device.type == "mps":
            raise DeviceError("--precision bf16 is not supported on mps")
        return requested
    return auto_precision(model, device.type, native_bf16(device))
