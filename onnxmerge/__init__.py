"""onnxmerge: compose pretrained ONNX classifiers into one deployable ONNX model."""

from onnx_graphsurgeon.logger import G_LOGGER as _GS_LOGGER  # noqa: E402

from .version import __version__

# graphsurgeon logs warnings (missing colour module, unknown dtypes of cleared shapes) that say nothing
# to our users; real problems surface as exceptions.
_GS_LOGGER.severity = _GS_LOGGER.ERROR

from .config import ImageInput, Preprocess, Source  # noqa: E402
from .errors import OnnxMergeError  # noqa: E402
from .merger import Merger  # noqa: E402

__all__ = ["Merger", "Source", "ImageInput", "Preprocess", "OnnxMergeError", "__version__"]
