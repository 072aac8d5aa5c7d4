"""Parity: the exported head's numerics, and the auto feature and build parity across architectures."""
