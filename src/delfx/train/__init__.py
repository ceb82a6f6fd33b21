"""Building blocks for fine-tuning the global descriptor: tuple losses and hard-negative mining."""
