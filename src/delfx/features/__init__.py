"""Local features: the common record type and the extractors that produce it."""
