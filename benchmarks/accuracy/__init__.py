"""Accuracy: every mode on real data, held-out models, held-out accuracy against the build's estimate."""
