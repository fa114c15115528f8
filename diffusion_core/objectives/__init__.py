"""Training objectives, each returning one loss per example: DDPM's L_simple, EDM's lognormal loss, continuous DSM, NCSN's score matching, MCMC maximum likelihood."""
