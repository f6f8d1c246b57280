"""Errors of the model layer, importable by architectures and loaders alike (no torch, no cycles)."""


class CheckpointError(ValueError):
    """A weight file that cannot be read or does not fit the architecture."""
