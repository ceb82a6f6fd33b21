"""File-level input and output: images, atomic writes, HTTP and archives."""
