"""Compatibility: the classifiers users bring (float16, int8, old opsets, pixel graphs, conv heads), issue 28."""
