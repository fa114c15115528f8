"""The training recipe every framework shares: one optimisation step, the EMA, the learning-rate
schedule, the precision, the per-rank batches with their position, the non-finite-step policy."""
