"""Feature extractors for image metrics: the in-domain classifier (labelled images), the in-domain
contrastive network (unlabelled images, no labels) and Inception-v3 from a local file."""
