"""Graph surgery on ONNX models: find the feature (inspect), cut, preprocess, stitch, share.

Speaks onnx and onnx-graphsurgeon only: never onnxruntime, never scikit-learn (checked by import-linter).
"""
