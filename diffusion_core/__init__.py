"""diffusion_core: the math, networks, data I/O and metrics of the diffusion platform."""
