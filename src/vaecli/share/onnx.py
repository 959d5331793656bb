"""``vae export --format onnx``: a run's encoder and decoder as ONNX graphs, run by onnxruntime
without torch.

* ``encoder.onnx``: ``image`` (N, C, H, W) float32 in [0, 1] -> ``mu``, ``logvar`` (N, D): q(z|x);
* ``decoder.onnx``: ``z`` (N, D) -> ``image`` (N, C, H, W) in [0, 1]: the likelihood's mean, the
  pixels that ``vae sample`` shows (:func:`vaecli.eval.inference.decode`);
* ``export.json``: names and shapes, latent size, image size and channels, likelihood, the prior
  (N(0, I), or a mixture of Gaussians in ``prior.npz`` that numpy samples), the exporter, vaecli's
  version and the largest difference from torch found on random inputs.

The batch dimension is dynamic. ``torch.onnx.export(dynamo=True)`` first; where it fails, the
TorchScript exporter (``export.json`` says which).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..fileio import atomic_write_json
from ..model.vae import VAE
from ..runs import store as ckpt

ONNX_EXTRA = "pip install 'vaecli[onnx]'"
ENCODER, DECODER, INFO, PRIOR_NPZ = "encoder.onnx", "decoder.onnx", "export.json", "prior.npz"
OPSET = 18
FORMAT = "vaecli-onnx-1"


def check_onnx() -> None:
    """Refuse in one line when onnx, onnxscript or onnxruntime is missing."""
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            raise ConfigError(f"--format onnx needs the {name} package: {ONNX_EXTRA}") from None


class EncoderGraph(nn.Module):
    """image in [0, 1] -> (mu, logvar) of q(z|x)."""

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.model.encode(image)
        return q.mu, q.logvar


class DecoderGraph(nn.Module):
    """z -> the likelihood's mean image in [0, 1] (what ``vae sample`` shows)."""

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z)


@dataclass
class Graph:
    """One graph to export: the module, an example input, the input and output names and shapes
    (``"N"`` for the dynamic batch)."""

    module: nn.Module
    example: torch.Tensor
    inputs: dict[str, list[int | str]]
    outputs: dict[str, list[int | str]]


def graphs(model: VAE) -> dict[str, Graph]:
    """The encoder and decoder graphs of ``model``, by file name."""
    c, s, d = model.config.channels, model.config.image_size, model.config.latent_dim
    img: list[int | str] = ["N", c, s, s]
    lat: list[int | str] = ["N", d]
    g = torch.Generator().manual_seed(0)
    return {
        ENCODER: Graph(EncoderGraph(model), torch.rand(2, c, s, s, generator=g), {"image": img}, {"mu": lat, "logvar": lat}),
        DECODER: Graph(DecoderGraph(model), torch.randn(2, d, generator=g), {"z": lat}, {"image": img}),
    }


def _export_one(graph: Graph, path: Path) -> str:
    """Write ``graph`` to ``path``: the dynamo exporter, else TorchScript's; returns which."""
    (name,) = graph.inputs
    args = (graph.example,)
    try:
        batch = torch.export.Dim("N", min=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(
                graph.module, args, input_names=[name], output_names=list(graph.outputs),
                dynamic_shapes=({0: batch},), dynamo=True, opset_version=OPSET, verbose=False,
            )  # fmt: skip
            assert prog is not None
            prog.save(str(path))
        return "dynamo"
    except Exception:  # the dynamo exporter refuses some graphs: fall back to TorchScript's
        pass
    axes = {n: {0: "N"} for n in [name, *graph.outputs]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph.module, args, str(path), input_names=[name], output_names=list(graph.outputs),
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)  # fmt: skip
    return "torchscript"


def max_difference(graph: Graph, path: Path, batch: int = 5, seed: int = 1) -> float:
    """The largest absolute difference between onnxruntime's outputs of ``path`` and torch's on a
    random batch of ``batch`` inputs."""
    import onnxruntime as ort

    g = torch.Generator().manual_seed(seed)
    shape = [batch, *graph.example.shape[1:]]
    x = torch.rand(shape, generator=g) if len(shape) == 4 else torch.randn(shape, generator=g)
    with torch.no_grad():
        want = graph.module(x)
    want = want if isinstance(want, tuple) else (want,)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {next(iter(graph.inputs)): x.numpy()})
    return max(float((torch.from_numpy(o) - w).abs().max()) for o, w in zip(got, want))


def export_onnx(run: Path, out: Path) -> dict[str, Any]:
    """Export run ``run`` into folder ``out`` (created): the two graphs, the prior and ``export.json``
    (returned)."""
    check_onnx()
    model, cfg, run = ckpt.load_model(run, "cpu")
    model.float().eval()
    out.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"format": FORMAT, "run": ckpt.run_ref(run), "graphs": {}}
    for file, graph in graphs(model).items():
        exporter = _export_one(graph, out / file)
        diff = max_difference(graph, out / file)
        info["graphs"][file] = {"inputs": graph.inputs, "outputs": graph.outputs, "exporter": exporter, "max_abs_diff_vs_torch": diff}
    from .. import __version__

    m = cfg.model
    info.update(
        latent_dim=m.latent_dim, image_size=m.image_size, channels=m.channels, likelihood=m.likelihood,
        pixels="the decoder's image is the likelihood's mean in [0, 1], as `vae sample` shows it" + (
            "; hierarchical: z is the top latent, the groups below at their prior means (as `vae decode`; "
            "`vae sample` draws them at --group-temperature)" if m.arch == "hvae" else ""),
        prior=export_prior(run, model, out), opset=OPSET, vaecli_version=__version__, torch_version=torch.__version__,
    )  # fmt: skip
    atomic_write_json(out / INFO, info)
    return info


def prior_mixture(run: Path, model: VAE) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """What ``vae sample`` samples z from, for export: (its description, the tensors of a Gaussian
    mixture ``weights`` (K,), ``means`` (K, D), ``scale_tril`` (K, D, D), or None for N(0, I) and for
    a prior numpy cannot sample simply (a flow))."""
    from ..model.mixture import GaussianMixture
    from ..model.priors import VampPrior
    from ..runs.priors import load_prior

    choice = load_prior(run, "auto", model)
    if isinstance(choice.prior, GaussianMixture):
        p = choice.prior
        tensors = {"weights": p.weights, "means": p.means, "scale_tril": p.scale_tril}
        return {"kind": "gmm", "fitted": True, "label": choice.label}, tensors
    if isinstance(choice.prior, VampPrior):  # an equal-weight mixture of the pseudo-inputs' posteriors
        with torch.no_grad():
            q = choice.prior.components()
        k = q.mu.shape[0]
        tensors = {"weights": torch.full((k,), 1.0 / k), "means": q.mu, "scale_tril": torch.diag_embed(torch.exp(0.5 * q.logvar))}
        return {"kind": "vamp", "fitted": False, "label": choice.label}, tensors
    if choice.info is not None:  # a fitted flow
        note = f"a fitted {choice.label}: sampling from it needs its parameters (prior.safetensors of the run) and vaecli; z ~ N(0, I) is the prior the model trained with"
        return {"kind": choice.info["kind"], "fitted": True, "label": choice.label, "note": note}, None
    return {"kind": "normal", "fitted": False, "label": "N(0, I)", "sample": "z = numpy.random.standard_normal((n, latent_dim))"}, None


def export_prior(run: Path, model: VAE, out: Path) -> dict[str, Any]:
    """The prior's entry of ``export.json``; a Gaussian mixture's tensors go to ``prior.npz`` (float64)."""
    import numpy as np

    desc, tensors = prior_mixture(run, model)
    if tensors is not None:
        arrays = {k: v.detach().to(torch.float64).cpu().numpy() for k, v in tensors.items()}
        np.savez(out / PRIOR_NPZ, **arrays)  # type: ignore[arg-type]
        desc.update(file=PRIOR_NPZ, sample="k ~ Categorical(weights); z = means[k] + scale_tril[k] @ standard_normal(latent_dim)")
    return desc
