"""Pasted outputs of README.md and docs/ whose runs are too long or too stateful for the test suite."""
