"""The model: the VAE with its named encoder and decoder parts, likelihoods, the posterior, priors (N(0, I), VampPrior) and the densities fitted after training (Gaussian mixture, RealNVP flow)."""
