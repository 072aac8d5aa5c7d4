"""The build of Z as a pipeline of named stages (``pipeline`` lists them in order, one module each)."""
