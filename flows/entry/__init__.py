"""Entry points: the `diffusion` command, the Prefect flow and its deployments."""
