"""What a network becomes at the boundary: the networks, the Denoiser(x, alpha, sigma) wrapper and its score adapters, energy models, exact analytic denoisers."""
