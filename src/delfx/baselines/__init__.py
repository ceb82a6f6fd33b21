"""Training-free baseline descriptors, for the demo and as a floor for every real method."""
