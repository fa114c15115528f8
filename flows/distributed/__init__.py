"""Ray: the cluster connection, actor pools, the Ray Train loop, sampling and feature actors."""
