"""Forward processes: the VP, sub-VP and VE SDEs and DDPM's discrete chain (their discretization)."""
