"""The model: the VAE with its named encoder and decoder parts, likelihoods, the posterior, priors (N(0, I), VampPrior) and the densities fitted after training (Gaussian mixture, RealNVP flow); the hierarchical VAE (:mod:`.hvae`, imported here so that ``VAE(config)`` of an ``hvae`` config builds it)."""

from . import hvae as _hvae  # noqa: F401  (registers the hvae arch in vae.ARCH_CLASSES)
