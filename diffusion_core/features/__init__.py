"""Feature extractors for image metrics: the in-domain classifier and Inception-v3 from a local file."""
