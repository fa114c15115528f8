"""The training recipe every framework shares: one optimisation step, the EMA, the learning-rate schedule."""
