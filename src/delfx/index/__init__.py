"""Indexes over local descriptors: codebooks, vocabulary tree, inverted files, HE and ASMK."""
