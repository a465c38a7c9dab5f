"""Errors shared across the runtime, importable without NumPy."""


class GGUFError(ValueError):
    """The file is not a GGUF we can read; the message says what is wrong and where."""
