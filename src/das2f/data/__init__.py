"""Scenes -> pre-cut HDF5 patch pairs -> streamed batches."""
