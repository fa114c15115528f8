"""Samplers, each a function of (denoiser, process, x_T, grid, noise, progress) returning (samples, NFE), and the registry that names them."""
