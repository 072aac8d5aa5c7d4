"""onnxmerge: compose pretrained ONNX classifiers into one deployable ONNX model."""

__version__ = "0.1.0"

from .compose import Merger, Source  # noqa: E402
from .errors import OnnxMergeError  # noqa: E402
from .preprocess import ImageInput, Preprocess  # noqa: E402

__all__ = ["Merger", "Source", "ImageInput", "Preprocess", "OnnxMergeError", "__version__"]
