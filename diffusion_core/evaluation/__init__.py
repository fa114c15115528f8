"""Sample-quality statistics on arrays (SWD, MMD, FD and its estimators, KID, precision/recall, memorization)."""
