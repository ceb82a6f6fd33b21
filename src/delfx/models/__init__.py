"""Building blocks of the global CNN descriptor: pooling layers and descriptor whitening."""
