"""The explorer's service: runs, latents and images in and out, with no HTTP in it.

Every call decodes and encodes through :mod:`vaecli.eval.inference` and loads weights through
:func:`vaecli.runs.store.load_model` (safetensors only); a bad request raises :class:`BadRequest`.
The HTTP server over it is :mod:`vaecli.explore.server`.

Per-dimension KL, KL(q(z_j|x) || N(0, 1)) averaged over test images (Kingma & Welling 2014,
appendix B), orders the sliders; a dimension is active by :func:`vaecli.eval.metrics.active_mask`
(the variance of its posterior mean over test images exceeds 0.01, Burda et al. 2016, sec. 5.2,
as ``vae info``'s active units). Both are read from ``summary.json`` (``test_per_dim_kl``,
``test_mu_variance``, which training writes) or computed once with
:func:`vaecli.eval.metrics.evaluate` on a subset of the run's test split, then cached per run; without
the variances, activity is unknown.
"""

from __future__ import annotations

import base64
import math
import os
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import ImageData
from ..errors import CheckpointError, ConfigError, DataError, RunNotFoundError, VaeError
from ..eval.inference import dims_by_kl
from ..eval.metrics import ACTIVE_THRESHOLD, active_mask, latent_stats, summary_floats
from ..render.images import strip_png
from ..runs import store as ckpt

MAX_UPLOAD_BYTES = 8 * 1024 * 1024  # an uploaded image
KL_IMAGES = 2000  # test images used when per-dimension KL must be computed
MAX_ABS_Z = 1e4  # decode refuses larger latent values (finite but meaningless)
MAX_STEPS = 33  # traversal strip length limit

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CLASS_NAMES = {"fashion-mnist": FASHION_CLASSES, "fashion-mnist-mini": FASHION_CLASSES, "mnist": tuple("0123456789")}

LogFn = Callable[[str], None]


class BadRequest(VaeError):
    """A request the explorer refuses (HTTP 400)."""


@dataclass
class ExploreRun:
    """A loaded run: model in eval mode on the explorer's device, its config, per-dimension KL and a lock."""

    name: str
    path: Path
    model: Any
    config: Any
    per_dim_kl: list[float]
    kl_source: str
    mu_variance: list[float] | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    test_images: torch.Tensor | None = None  # uint8 (N, C, H, W), loaded on first use
    test_labels: torch.Tensor | None = None
    test_error: str | None = None
    prior: Any = None  # the vaecli.runs.priors.PriorChoice of "sample", loaded on first use

    @property
    def latent_dim(self) -> int:
        return int(self.config.model.latent_dim)

    def info(self) -> dict[str, Any]:
        """What ``GET /api/run`` returns: shape, KL per dimension, slider order, activity."""
        kl = self.per_dim_kl
        order = dims_by_kl(kl)
        m, t = self.config.model, self.config.train
        if self.mu_variance is not None:
            active, rule = active_mask(self.mu_variance), f"Var(mu) > {ACTIVE_THRESHOLD:g}"
        else:  # no variances of the posterior means: every slider is shown as it is, none greyed
            active, rule = [True] * self.latent_dim, "unknown (no Var(mu) of the test split)"
        return {
            "name": self.name,
            "latent_dim": self.latent_dim,
            "channels": int(m.channels),
            "image_size": int(m.image_size),
            "arch": m.arch,
            "beta": t.beta,
            "data": self.config.data.name,
            "epochs": self.summary.get("epochs"),
            "test_neg_elbo": _finite_or_none((self.summary.get("test") or {}).get("neg_elbo")),
            "per_dim_kl": kl,
            "kl_source": self.kl_source,
            "mu_variance": self.mu_variance,
            "order": order,
            "active": active,
            "active_units": sum(active) if self.mu_variance is not None else None,
            "active_rule": rule,
        }


# ----------------------------------------------------------------------------- images


def data_url(png: bytes) -> str:
    """A PNG as a ``data:`` URL (what the page puts in ``<img src>``)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# ----------------------------------------------------------------------------- the explorer


class Explorer:
    """The state behind the server: the runs it can show, loaded lazily and cached.

    ``default_run`` is a run name or folder (None: the latest run), ``weights`` a safetensors file
    to load for it instead of its ``model.safetensors``. Only runs under the runs folder, plus the
    default one, can be opened by name from the page. Models run on ``device``.
    """

    def __init__(
        self,
        default_run: str | os.PathLike[str] | None = None,
        kl_images: int = KL_IMAGES,
        log: LogFn | None = None,
        *,
        weights: str | os.PathLike[str] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        from ..device import resolve_device

        self.device = resolve_device(device) if isinstance(device, str) else device
        path = ckpt.resolve_run(default_run)
        if not (Path(weights) if weights is not None else path / ckpt.MODEL).exists():
            raise CheckpointError(f"run {path.name!r} has no weights yet ({ckpt.MODEL}): train it first")
        self.default = path.name
        self._extra = {path.name: path}
        self._weights = {path.name: weights}
        self._runs: dict[str, ExploreRun] = {}
        self._lock = threading.Lock()
        self.kl_images = kl_images
        self.log: LogFn = log or (lambda msg: None)

    # -- runs

    def run_paths(self) -> dict[str, Path]:
        """Trained runs by name: the runs folder's, plus the default run (which wins a name clash)."""
        out = {p.name: p for p in ckpt.list_runs() if (p / ckpt.MODEL).exists()}
        out.update(self._extra)
        return out

    def list_runs(self) -> dict[str, Any]:
        """``GET /api/runs``: every trained run (cheap: config and summary only) and the default."""
        rows = []
        for name, path in self.run_paths().items():
            try:
                row = ckpt.run_brief(path)
            except VaeError:
                continue
            loaded = self._runs.get(name)
            kl = loaded.per_dim_kl if loaded else summary_floats(ckpt.read_summary(path), "test_per_dim_kl", row["latent_dim"])
            rows.append({**row, "name": name, "per_dim_kl": kl})
        return {"default": self.default, "runs": rows}

    def get(self, name: str | None) -> ExploreRun:
        """The loaded run ``name`` (None: the default); loads and computes KL on first use."""
        name = self.default if name in (None, "") else name
        if not isinstance(name, str):
            raise BadRequest("run must be a string")
        with self._lock:
            run = self._runs.get(name)
            if run is not None:
                return run
            if name not in self._extra:
                try:
                    ckpt.validate_run_name(name)
                except ConfigError as exc:
                    raise BadRequest(str(exc)) from None
            path = self.run_paths().get(name)
            if path is None:
                raise BadRequest(f"unknown run {name!r} (see GET /api/runs)")
            try:
                run = self._load(name, path)
            except RunNotFoundError as exc:
                raise BadRequest(str(exc)) from None
            self._runs[name] = run
            return run

    def _load(self, name: str, path: Path) -> ExploreRun:
        model, cfg, path = ckpt.load_model(path, self.device, weights=self._weights.get(name))
        summary = ckpt.read_summary(path)
        run = ExploreRun(name=name, path=path, model=model, config=cfg, per_dim_kl=[], kl_source="", summary=summary)

        def test() -> ImageData | None:  # summary.json lacks the statistics: compute them on the test split
            self.log(f"computing per-dimension KL of run {name} on up to {self.kl_images} test images")
            self._load_test(run)
            return None if run.test_images is None else ImageData(images=run.test_images)

        kl, run.mu_variance, source = latent_stats(model, summary, test, limit=self.kl_images)
        run.per_dim_kl = kl or [0.0] * cfg.model.latent_dim
        run.kl_source = f"unavailable ({run.test_error})" if kl is None else source
        return run

    def _load_test(self, run: ExploreRun) -> None:
        """Load the run's test split once (never downloads); remembers the reason when it cannot."""
        if run.test_images is not None or run.test_error is not None:
            return
        from ..data import load_data

        try:
            _, test, _ = load_data(run.config.data, download=False)
        except VaeError as exc:
            run.test_error = str(exc)
            return
        m = run.config.model
        if test.channels != m.channels or test.image_size != m.image_size or len(test) == 0:
            run.test_error = (
                f"the test split ({len(test)} images {test.channels}x{test.image_size}x{test.image_size}) does not fit the model"
            )
            return
        run.test_images, run.test_labels = test.images, test.labels

    # -- operations (each returns plain JSON-able data or PNG bytes)

    def decode(self, name: str | None, z: Any) -> bytes:
        """Decode one latent vector to a PNG at the model's resolution."""
        run = self.get(name)
        zt = parse_z(z, run.latent_dim)
        from ..eval.inference import decode

        with run.lock:
            img = decode(run.model, zt)
        return strip_png(img)

    def traverse(self, name: str | None, z: Any, dim: Any, steps: Any = 9, value_range: Any = 3.0) -> bytes:
        """Decode ``steps`` copies of ``z`` with dimension ``dim`` swept over [-range, +range]: one PNG strip."""
        run = self.get(name)
        zt = parse_z(z, run.latent_dim)
        d = _number(dim, "dim", 0, run.latent_dim - 1, int)
        n = _number(steps, "steps", 2, MAX_STEPS, int)
        r = _number(value_range, "range", 1e-3, 100.0)
        from ..eval.inference import decode, traverse_latents

        with run.lock:
            imgs = decode(run.model, traverse_latents(zt[0], [d], r, n))
        return strip_png(imgs, gap=2)

    def encode(self, name: str | None, data: bytes) -> dict[str, Any]:
        """Posterior mean of an uploaded image (any format Pillow reads), plus the image as the model sees it."""
        run = self.get(name)
        if not data:
            raise BadRequest("empty upload: send the image file as the request body")
        if len(data) > MAX_UPLOAD_BYTES:
            raise BadRequest(f"upload too large ({len(data):,} bytes, limit {MAX_UPLOAD_BYTES:,})")
        m = run.config.model
        x = _decode_upload(data, m.channels, m.image_size, run.config.data.fit)
        return self._encode_uint8(run, x)

    def random_test(self, name: str | None, seed: Any = None) -> dict[str, Any]:
        """Posterior mean of a random image of the run's test split (``seed`` picks it reproducibly)."""
        run = self.get(name)
        self._load_test(run)
        if run.test_images is None:
            raise BadRequest(f"no test images for run {run.name}: {run.test_error}")
        rng = random.Random(None if seed in (None, "") else _number(seed, "seed", 0, 2**63 - 1, int))
        i = rng.randrange(len(run.test_images))
        out = self._encode_uint8(run, run.test_images[i])
        out["index"] = i
        label = None if run.test_labels is None else int(run.test_labels[i])
        names = CLASS_NAMES.get(run.config.data.name, ())
        out["label"] = label
        out["label_name"] = names[label] if label is not None and 0 <= label < len(names) else None
        return out

    def prior(self, name: str | None, seed: Any = None) -> dict[str, Any]:
        """A draw z from the run's prior (its fitted prior when it has one, see :func:`vaecli.runs.priors.load_prior`;
        else N(0, I)), with the prior's label."""
        run = self.get(name)
        from ..eval.inference import sample_latents
        from ..runs.priors import load_prior

        gen = torch.Generator()
        if seed in (None, ""):
            gen.seed()
        else:
            gen.manual_seed(_number(seed, "seed", 0, 2**63 - 1, int))
        with run.lock:
            if run.prior is None:
                try:
                    run.prior = load_prior(run.path, "auto", run.model)
                except CheckpointError as exc:
                    raise BadRequest(str(exc)) from None
                if run.prior.note:
                    self.log(f"run {run.name}: {run.prior.note}")
            z = sample_latents(run.prior.prior, 1, 1.0, gen)
        return {"z": [float(v) for v in z[0]], "prior": run.prior.label}

    def _encode_uint8(self, run: ExploreRun, x: torch.Tensor) -> dict[str, Any]:
        from ..data import to_float
        from ..eval.inference import encode

        xf = to_float(x.unsqueeze(0))
        with run.lock:
            q = encode(run.model, xf)
        return {"z": [float(v) for v in q.mu[0]], "logvar": [float(v) for v in q.logvar[0]], "input": data_url(strip_png(xf))}


# ----------------------------------------------------------------------------- validation


def _finite_or_none(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def parse_z(z: Any, latent_dim: int) -> torch.Tensor:
    """A JSON list of ``latent_dim`` finite numbers -> tensor (1, D); anything else -> BadRequest."""
    if not isinstance(z, list):
        raise BadRequest(f"z must be a list of {latent_dim} numbers")
    if len(z) != latent_dim:
        raise BadRequest(f"z must have {latent_dim} values for this run, got {len(z)}")
    for i, v in enumerate(z):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise BadRequest(f"z[{i}] must be a finite number, got {v!r}")
        if abs(v) > MAX_ABS_Z:
            raise BadRequest(f"z[{i}] = {v} is out of range (|z| <= {MAX_ABS_Z:g})")
    return torch.tensor([z], dtype=torch.float32)


def _number(v: Any, name: str, lo: float, hi: float, kind: type = float) -> Any:
    """A query or JSON value as ``kind`` (int or float) within [lo, hi]; anything else -> BadRequest."""
    what = "an integer" if kind is int else "a number"
    if isinstance(v, str):
        try:
            v = kind(v)
        except ValueError:
            raise BadRequest(f"{name} must be {what}, got {v!r}") from None
    ok = int if kind is int else (int, float)
    if isinstance(v, bool) or not isinstance(v, ok) or (isinstance(v, float) and not math.isfinite(v)):
        raise BadRequest(f"{name} must be {'an integer' if kind is int else 'a finite number'}, got {v!r}")
    if not lo <= v <= hi:
        bounds = f"{lo} and {hi}" if kind is int else f"{lo:g} and {hi:g}"
        raise BadRequest(f"{name} must be between {bounds}, got {v}")
    return kind(v)


def _decode_upload(data: bytes, channels: int, size: int, fit: str = "crop") -> torch.Tensor:
    """Decode upload bytes with :func:`vaecli.data.load_image` (the one image decoder) by the run's rule."""
    from ..data import load_image

    try:
        return load_image(data, channels, size, fit)
    except DataError as exc:
        raise BadRequest(str(exc).replace("image: ", "upload: ", 1)) from None


# ----------------------------------------------------------------------------- HTTP
