"""Deployment: int8 that keeps accuracy, ORT-format and onnxruntime-web runtimes."""
