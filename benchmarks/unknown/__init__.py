"""Z knows what it does not know: which score, and how well Z's "unknown" answer works end to end."""
