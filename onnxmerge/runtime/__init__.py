"""Where models run: onnxruntime sessions, the engine interface, the build's weight folder, the feature
cache and the memory-limited probe process. The only layer that opens onnxruntime sessions."""
