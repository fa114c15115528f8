"""A process from its JSON config, as a model config names it: {"kind": ..., **its arguments}."""
from __future__ import annotations

from diffusion_core.processes.sde import SDE, VESDE, VPSDE, SubVPSDE

PROCESSES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def build_process(config: dict) -> SDE:
    """The process named by config["kind"], built from the remaining keys."""
    config = dict(config)
    kind = config.pop("kind", "vp")
    if kind not in PROCESSES:
        raise ValueError(f"process.kind must be one of {sorted(PROCESSES)}, got {kind!r}")
    return PROCESSES[kind](**config)
