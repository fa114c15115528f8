"""Likelihoods: exact log p(x) through the probability-flow ODE, DDPM's variational bound, bits/dim."""
