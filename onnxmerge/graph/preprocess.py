"""Per-source preprocessing as ONNX nodes, and the numpy reference it is checked against.

Z takes raw uint8 ``[N, H, W, C]`` images. Each source gets, inside the graph: channel conversion
(gray <-> RGB), a bilinear ``Resize`` (half_pixel, no antialias) to its own size, its layout, ``x * scale``,
``(x - mean) / std`` per channel, an optional flatten for flat-vector models, and a cast to its dtype.
The ops are kept separate (Mul, Sub, Div) rather than folded, so the graph computes exactly what the
numpy reference computes.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..config import ImageInput, Preprocess
from .fold import constant_value
from .topology import consumers

# ITU-R 601-2 luma weights, the ones Pillow's "L" conversion uses.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _const(name: str, value) -> gs.Constant:
    return gs.Constant(name, np.asarray(value))


def _per_channel(values, spec: Preprocess) -> np.ndarray:
    """Per-channel constant shaped for a fast broadcast in onnxruntime (same values, so the same results).

    onnxruntime broadcasts element-wise ops span by span of the innermost dimension: an NHWC tensor times a
    ``[1, 1, 1, C]`` constant runs in spans of C (3) values and took 8.4 ms on 8 x 224 x 224 x 3, against
    0.3 ms for the constant repeated along the width, ``[1, 1, W, C]``. A scalar against ``[N, H, W, 1]``
    is slow too (0.58 ms against 0.01 ms for a ``[1, 1, 1, 1]`` constant at 32 x 28 x 28 x 1).
    """
    v = np.asarray(values, np.float32)
    if spec.layout == "NCHW":
        return v.reshape(1, -1, 1, 1)
    if np.all(v == v[0]):
        return np.full([1, 1, 1, 1], v[0], np.float32)
    return np.ascontiguousarray(np.tile(v.reshape(1, 1, 1, -1), (1, 1, spec.width, 1)))


def build_preprocess(
    prefix: str, image: gs.Variable, src: ImageInput, spec: Preprocess, output: gs.Variable
) -> list[gs.Node]:
    """Nodes that turn Z's raw ``image`` into ``output``, the tensor the source expects."""
    nodes: list[gs.Node] = []
    counter = iter(range(1000))

    def add(op: str, inputs: list, attrs: dict | None = None, out: gs.Variable | None = None) -> gs.Variable:
        out = out if out is not None else gs.Variable(f"{prefix}/pre/{op.lower()}_{next(counter)}")
        nodes.append(gs.Node(op, f"{prefix}/pre/{op}_{len(nodes)}", attrs=attrs or {}, inputs=inputs, outputs=[out]))
        return out

    x = add("Cast", [image], {"to": 1})  # float32
    if src.channels == 3 and spec.channels == 1:
        x = add("MatMul", [x, _const(f"{prefix}/pre/luma", LUMA.reshape(3, 1))])
    elif src.channels == 1 and spec.channels == 3:
        x = add("Concat", [x, x, x], {"axis": 3})
    resize = (spec.height, spec.width) != (src.height, src.width)
    if resize or spec.layout == "NCHW":
        x = add("Transpose", [x], {"perm": [0, 3, 1, 2]})
        if resize:
            batch_channels = add(
                "Slice",
                [
                    add("Shape", [x]),
                    _const(f"{prefix}/pre/s0", np.array([0], np.int64)),
                    _const(f"{prefix}/pre/s2", np.array([2], np.int64)),
                ],
            )
            sizes = add(
                "Concat",
                [batch_channels, _const(f"{prefix}/pre/hw", np.array([spec.height, spec.width], np.int64))],
                {"axis": 0},
            )
            empty = _const(f"{prefix}/pre/empty", np.zeros([0], np.float32))
            x = add(
                "Resize", [x, empty, empty, sizes], {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}
            )
        if spec.layout == "NHWC":
            x = add("Transpose", [x], {"perm": [0, 2, 3, 1]})
    last_out = output if not spec.flat and spec.dtype == np.float32 else None
    if spec.raw:  # pixels as they are: the source normalises them itself
        x = add("Identity", [x], out=last_out)
    else:
        x = add("Mul", [x, _const(f"{prefix}/pre/scale", np.full([1, 1, 1, 1], spec.scale, np.float32))])
        x = add("Sub", [x, _const(f"{prefix}/pre/mean", _per_channel(spec.mean, spec))])
        x = add("Div", [x, _const(f"{prefix}/pre/std", _per_channel(spec.std, spec))], out=last_out)
    if spec.flat:
        x = add("Flatten", [x], {"axis": 1}, out=output if spec.dtype == np.float32 else None)
    if spec.dtype != np.float32:
        from onnx.helper import np_dtype_to_tensor_dtype

        if spec.dtype.kind in "ui":  # resized pixels back to integers: rounded (half to even, as numpy)
            x = add("Round", [x])
        add("Cast", [x], {"to": int(np_dtype_to_tensor_dtype(spec.dtype))}, out=output)
    return nodes


def _resize_axis(x: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Linear interpolation along one axis, ONNX ``half_pixel`` coordinates, edges clamped.

    The source coordinate is computed in float32 as onnxruntime does (``(i + 0.5) / scale - 0.5`` with a
    float32 scale); computing it in float64 would differ from Z by ~1e-5 of the value on upsampling.
    """
    n = x.shape[axis]
    if n == size:
        return x
    scale = np.float32(size) / np.float32(n)
    coords = (np.arange(size, dtype=np.float32) + np.float32(0.5)) / scale - np.float32(0.5)
    coords = np.clip(coords, 0, n - 1).astype(np.float64)
    lo = np.floor(coords).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    w = (coords - lo).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    return np.take(x, lo, axis=axis) * (1 - w) + np.take(x, hi, axis=axis) * w


def reference_preprocess(images: np.ndarray, src: ImageInput, spec: Preprocess) -> np.ndarray:
    """What :func:`build_preprocess` must compute, in numpy (float64 arithmetic, float32 result)."""
    x = images.astype(np.float64)
    if src.channels == 3 and spec.channels == 1:
        x = x @ LUMA.astype(np.float64).reshape(3, 1)
    elif src.channels == 1 and spec.channels == 3:
        x = np.concatenate([x, x, x], axis=3)
    x = _resize_axis(_resize_axis(x, 1, spec.height), 2, spec.width)
    if spec.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    if not spec.raw:
        bshape = [1, -1, 1, 1] if spec.layout == "NCHW" else [1, 1, 1, -1]
        x = (x * spec.scale - np.reshape(spec.mean, bshape)) / np.reshape(spec.std, bshape)
    if spec.flat:
        x = x.reshape(len(x), -1)
    # float32 first, as Z computes, then the source's type: a float16 input rounded once more from float64
    # would differ from Z's by one float16 step (1.95e-3 at 2.6)
    x = x.astype(np.float32)
    return (np.round(x) if np.dtype(spec.dtype).kind in "ui" else x).astype(spec.dtype)


#: ops between a model's input and its own normalisation that keep pixel values (layout, casts)
_KEEPS_PIXELS = {
    "Cast",
    "Transpose",
    "Identity",
    "Reshape",
    "Unsqueeze",
    "Squeeze",
    "QuantizeLinear",
    "DequantizeLinear",
}
#: what a graph divides pixels by to normalise them itself: x / 255 (0..1) or x / 127.5 - 1 (-1..1)
_PIXEL_DIVISORS = (255.0, 127.5)


def _scalar(model: onnx.ModelProto, name: str) -> float | None:
    """The value of a one-element constant (an initializer, a ``Constant``, or a small constant subgraph such
    as a quantised scalar's ``DequantizeLinear``), else None."""
    value = constant_value(model, name)
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def own_preprocessing(model: onnx.ModelProto, input_name: str) -> str | None:
    """Why the model takes raw pixels and preprocesses them itself, or None: its input is uint8, or a float input
    that its graph, past layout ops and casts, first multiplies by 1/255 (1/127.5) or divides by 255 (127.5)."""
    graph = model.graph
    value = next(i for i in graph.input if i.name == input_name)
    if value.type.tensor_type.elem_type == onnx.TensorProto.UINT8:
        return f"its input {input_name!r} is uint8 pixels"
    readers = consumers(graph)
    name, seen = input_name, 0
    while seen < 8 and len(readers.get(name, [])) == 1:
        node, seen = readers[name][0], seen + 1
        if node.op_type in _KEEPS_PIXELS:
            name = node.output[0]
            continue
        if node.op_type in ("Mul", "Div") and len(node.input) == 2:
            factor = _scalar(model, node.input[1] if node.input[0] == name else node.input[0])
            if factor:
                divisor = factor if node.op_type == "Div" else 1 / factor
                if any(abs(divisor - d) <= 1e-3 * d for d in _PIXEL_DIVISORS):
                    return f"its graph divides the input pixels by {divisor:g} itself ({node.op_type} {node.name!r})"
        return None
    return None
