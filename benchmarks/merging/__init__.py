"""Merging: one backbone merged in weight space vs the concatenation (issue 27)."""
