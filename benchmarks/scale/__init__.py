"""Scale: prediction past one machine (dask) and memory against the pool's size."""
