"""The version of onnxmerge (its own module, so any layer can read it without importing the package's API)."""

__version__ = "0.1.0"
