"""FP32 ONNX to mixed FP16 ONNX, for strongly typed TensorRT networks and fp16 providers.

TensorRT 11 builds only strongly typed networks: the precision of every tensor comes from
the ONNX file, so an fp16 engine needs an fp16 ONNX. The conversion here:

- stores float weights and constants as float16 and runs the graph in float16;
- keeps normalisation layers (BatchNormalization, InstanceNormalization,
  LayerNormalization, GroupNormalization) in float32: their statistics and parameters
  stay float32, with casts around them (fp16 variance and epsilon underflow);
- keeps inputs that the ONNX standard requires in float32 (Resize's ``roi`` and
  ``scales``) and whatever computes them;
- keeps the graph's inputs and outputs in their types, with casts at the edges, so the
  model's metadata and the pipeline's buffers do not change.

NVIDIA ModelOpt's AutoCast does the same with accuracy-driven choices; this module needs
only ``onnx`` and is tested with ONNX Runtime on the CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

NORMALIZATION_OPS = frozenset({"BatchNormalization", "InstanceNormalization", "LayerNormalization",
                               "GroupNormalization"})
# op type -> input positions the standard types as float32 whatever the data type.
_FP32_INPUTS = {"Resize": (1, 2), "Upsample": (1,)}
# ops through which a float32-only value is computed (walked back from the position above).
_SCALAR_MATH = frozenset({"Cast", "Div", "Mul", "Add", "Sub", "Concat", "Constant", "Unsqueeze", "Squeeze",
                          "Gather", "Slice", "Floor", "Ceil", "Reshape", "ConstantOfShape", "Identity"})


def convert_to_fp16(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """A mixed-precision copy of ``model`` (see the module docstring).

    Args:
        model: an FP32 ONNX model without control-flow subgraphs.

    Raises:
        ValueError: the model holds If/Loop/Scan subgraphs, which this converter does not walk.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    loops = sorted({n.op_type for n in graph.node if n.op_type in ("If", "Loop", "Scan")})
    if loops:
        raise ValueError(f"fp16 conversion does not walk control-flow subgraphs; the model has {loops}. Convert "
                         f"it with NVIDIA ModelOpt AutoCast (python -m modelopt.onnx.autocast) instead")
    keep32 = _float32_only_names(graph)

    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and init.name not in keep32:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for node in graph.node:
        if node.output and node.output[0] in keep32:
            continue
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16),
                                                        attr.t.name))

    nodes: list[onnx.NodeProto] = []
    initializers = {i.name for i in graph.initializer}
    renamed: dict[str, str] = {}
    for inp in graph.input:
        if inp.name not in initializers and inp.type.tensor_type.elem_type == TensorProto.FLOAT:
            renamed[inp.name] = f"{inp.name}__fp16"
            nodes.append(helper.make_node("Cast", [inp.name], [renamed[inp.name]], to=TensorProto.FLOAT16,
                                          name=f"{inp.name}__to_fp16"))
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
        if node.op_type in NORMALIZATION_OPS:
            x, y = node.input[0], node.output[0]
            nodes.append(helper.make_node("Cast", [x], [f"{x}__fp32"], to=TensorProto.FLOAT, name=f"{x}__to_fp32"))
            node.input[0] = f"{x}__fp32"
            node.output[0] = f"{y}__fp32"
            nodes.append(node)
            nodes.append(helper.make_node("Cast", [f"{y}__fp32"], [y], to=TensorProto.FLOAT16, name=f"{y}__to_fp16"))
        else:
            nodes.append(node)
    for out in graph.output:
        if out.type.tensor_type.elem_type == TensorProto.FLOAT:
            inner = f"{out.name}__fp16"
            for node in nodes:
                node.output[:] = [inner if o == out.name else o for o in node.output]
                node.input[:] = [inner if i == out.name else i for i in node.input]
            nodes.append(helper.make_node("Cast", [inner], [out.name], to=TensorProto.FLOAT, name=f"{out.name}__out"))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # stale float32 shapes; ONNX Runtime and TensorRT infer them again
    return model


def _float32_only_names(graph: "onnx.GraphProto") -> set[str]:
    """Names of values that must stay float32: normalisation parameters, Resize scales
    and roi, and the small computations that produce them."""
    keep: set[str] = set()
    for node in graph.node:
        if node.op_type in NORMALIZATION_OPS:
            keep.update(n for n in node.input[1:] if n)
        for i in _FP32_INPUTS.get(node.op_type, ()):
            if i < len(node.input) and node.input[i]:
                keep.add(node.input[i])
    producers = {out: node for node in graph.node for out in node.output}
    todo = list(keep)
    while todo:
        node = producers.get(todo.pop())
        if node is None or node.op_type not in _SCALAR_MATH:
            continue
        for name in node.input:
            if name and name not in keep:
                keep.add(name)
                todo.append(name)
    return keep


def convert_file_to_fp16(source: str | Path, target: str | Path) -> Path:
    """Convert the ONNX file ``source`` and write it (metadata kept) to ``target``."""
    import onnx

    converted = convert_to_fp16(onnx.load(str(source)))
    onnx.save(converted, str(target))
    logger.info("wrote fp16 ONNX %s (normalisation layers kept in fp32)", target)
    return Path(target)
