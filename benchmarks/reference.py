"""The plain recipe: the PyTorch VAE training loop a user writes, the baseline vaecli is measured against.

A torchvision ``FashionMNIST`` with a ``ToTensor`` DataLoader (batch 128, shuffled), the model
built by ``vaecli.model.vae.VAE`` (``--arch seed`` unless told otherwise), default Adam at 1e-3, fp32,
the loss BCE summed over pixels plus the Gaussian KL, per image, gradient-norm clip 1.0 (as the
seed document trains). Written once here; the benchmarks use it in-process (:class:`PlainRecipe`,
with the levers vaecli pulls switched on one by one) or in a fresh process::

    python benchmarks/reference.py --data-dir /path/to/data --steps 40            # images/s
    python benchmarks/reference.py --data-dir /path/to/data --seconds 120 --evaluate
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import harness

BATCH, LR, CLIP = 128, 1e-3, 1.0


def plain_loss(out: Any, x: Any) -> Any:
    """The loss as users write it: BCE of sigmoid(logits) summed over pixels plus
    KL(N(mu, sigma^2) || N(0, I)) = -1/2 sum(1 + log sigma^2 - mu^2 - sigma^2) (Kingma & Welling
    2014, appendix B), per image of the batch."""
    import torch
    import torch.nn.functional as F

    recon = F.binary_cross_entropy(torch.sigmoid(out.params), x, reduction="sum")
    kl = -0.5 * torch.sum(1 + out.logvar - out.mu.pow(2) - out.logvar.exp())
    return (recon + kl) / x.shape[0]


class PlainRecipe:
    """The plain recipe on Fashion-MNIST under ``root``, one :meth:`step` at a time. The levers
    (all off: the plain recipe) are those vaecli uses: ``memory`` (the uint8 images held in memory,
    converted per batch, instead of the ToTensor loader), ``memory_format`` (e.g. channels_last)
    and ``adam`` (keyword arguments of Adam, e.g. ``{"fused": True}``)."""

    def __init__(self, root: str, model: Any = None, memory: bool = False, memory_format: Any = None,
                 adam: dict[str, Any] | None = None, lr: float = LR, seed: int = 0) -> None:  # fmt: skip
        import torch
        import torchvision
        from torch.utils.data import DataLoader
        from torchvision import transforms

        from vaecli.config import ModelConfig
        from vaecli.model.vae import VAE

        torch.manual_seed(seed)
        self.data = torchvision.datasets.FashionMNIST(root, train=True, download=False, transform=transforms.ToTensor())
        self.model = VAE(model or ModelConfig(arch="seed"))
        self.memory_format = memory_format or torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr, **(adam or {}))
        self.memory = memory
        self.images = self.data.data.unsqueeze(1) if memory else None  # uint8 (N, 1, 28, 28)
        self.loader = DataLoader(self.data, batch_size=BATCH, shuffle=True, drop_last=True)
        self._batches: Any = iter(())
        self._order, self._pos = torch.randperm(len(self.data)), 0

    def _batch(self) -> Any:
        if self.memory:
            n = len(self.data) // BATCH
            i, self._pos = self._pos % n, self._pos + 1
            return (self.images[self._order[i * BATCH : (i + 1) * BATCH]].float() / 255).contiguous(memory_format=self.memory_format)
        x = next(self._batches, None)
        if x is None:
            self._batches = iter(self.loader)
            x = next(self._batches)
        return x[0]

    def step(self) -> None:
        """One optimisation step on the next batch."""
        import torch

        self.model.train()
        x = self._batch()
        loss = plain_loss(self.model(x), x)
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
        self.optimizer.step()

    def train(self, steps: int | None = None, seconds: float | None = None) -> dict[str, Any]:
        """:data:`harness.WARMUP` steps, then ``steps`` more (or until ``seconds`` of training);
        images/s over the steps after the warm-up, as ``vae train`` reports it."""
        import torch

        done, t_warm, t0 = 0, None, time.perf_counter()
        while (seconds is None and done < harness.WARMUP + (steps or 0)) or (seconds is not None and time.perf_counter() - t0 < seconds):
            self.step()
            done += 1
            if done == harness.WARMUP:
                t_warm = time.perf_counter()
        t_end = time.perf_counter()
        timed = done - harness.WARMUP
        ips = timed * BATCH / (t_end - t_warm) if t_warm and timed > 0 else 0.0
        return {"steps": done, "images_per_second": round(ips, 2), "train_seconds": round(t_end - t0, 2),
                "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}  # fmt: skip

    def test_neg_elbo(self, root: str) -> float:
        """-ELBO on the test split, BCE nats per image, scored by :func:`vaecli.eval.metrics.evaluate`
        exactly as ``vae train`` scores its own runs (eval mode, one posterior sample per image)."""
        from vaecli.config import DataConfig
        from vaecli.data import load_split
        from vaecli.eval.metrics import evaluate

        test = load_split(DataConfig(name="fashion-mnist", root=root), "test")
        return evaluate(self.model, test, device="cpu", seed=0).neg_elbo


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="folder holding FashionMNIST/raw")
    p.add_argument("--steps", type=int, default=40, help="timed steps after the warm-up")
    p.add_argument("--seconds", type=float, default=None, help="train for this many seconds instead")
    p.add_argument("--evaluate", action="store_true", help="also score the test split")
    args = p.parse_args(argv)
    recipe = PlainRecipe(args.data_dir)
    result = recipe.train(args.steps, args.seconds)
    if args.evaluate:
        result["test_neg_elbo"] = recipe.test_neg_elbo(args.data_dir)
    print(json.dumps(result))
    return 0


def run(data_dir: str, steps: int = 40, seconds: float | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The plain recipe in a fresh process (:func:`harness.run_measured`): ``steps`` timed steps,
    or ``seconds`` of training and then the test score; ``env`` is added to the user's environment."""
    cmd = [sys.executable, __file__, "--data-dir", data_dir, "--steps", str(steps)]
    if seconds is not None:
        cmd += ["--seconds", str(seconds), "--evaluate"]
    r = harness.run_measured(cmd, env=harness.plain_env(env))
    r["result"] = harness.last_json(r.pop("stdout"))
    return r


if __name__ == "__main__":
    sys.exit(main())
