"""A small ONNX graph assembler: nodes, graph inputs/outputs, small constants, initializers.

Kept deliberately dumb: it knows nothing about Phi. Big initializers come in already written to
the external-data file (see :mod:`external_data`); small constants (shapes, scalars) are stored
inside the proto. ``to_model`` returns a ModelProto a few hundred KB in size whatever the model.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .constants import IR_VERSION, MS_DOMAIN, MS_OPSET, ONNX_OPSET, PRODUCER

__all__ = ["GraphBuilder"]


class GraphBuilder:
    """Collects the pieces of one ONNX graph and names node outputs uniquely."""

    def __init__(self, name: str = "main_graph"):
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.initializers: list[TensorProto] = []
        self._initializer_names: set[str] = set()
        self._node_names: set[str] = set()
        self._constants: dict[tuple, str] = {}

    # -- values -----------------------------------------------------------------------------
    def add_input(self, name: str, elem_type: int, shape: Sequence[int | str | None]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def add_output(self, name: str, elem_type: int, shape: Sequence[int | str | None]) -> str:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def add_initializer(self, tensor: TensorProto) -> str:
        if tensor.name in self._initializer_names:
            raise ValueError(f"initializer {tensor.name!r} added twice")
        self._initializer_names.add(tensor.name)
        self.initializers.append(tensor)
        return tensor.name

    def has_initializer(self, name: str) -> bool:
        return name in self._initializer_names

    def const(self, value: Any, dtype: Any = np.int64) -> str:
        """A small constant stored in the proto (shapes, axes, scalars); deduplicated."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._constants:
            name = f"/const/{arr.dtype.name}/{'x'.join(map(str, arr.shape)) or 'scalar'}/{len(self._constants)}"
            self.add_initializer(numpy_helper.from_array(arr, name))
            self._constants[key] = name
        return self._constants[key]

    # -- nodes ------------------------------------------------------------------------------
    def node(
        self,
        op_type: str,
        inputs: Sequence[str],
        name: str,
        *,
        outputs: Sequence[str] | int = 1,
        domain: str = "",
        **attrs: Any,
    ) -> list[str]:
        """Add a node; ``outputs`` is a list of names or a count (then named ``<name>/output_i``)."""
        if name in self._node_names:
            raise ValueError(f"node name {name!r} used twice")
        self._node_names.add(name)
        if isinstance(outputs, int):
            outputs = [f"{name}/output_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), name=name, domain=domain or None, **attrs))
        return list(outputs)

    def node1(self, op_type: str, inputs: Sequence[str], name: str, *, domain: str = "", **attrs: Any) -> str:
        """A node with exactly one output; returns its name."""
        return self.node(op_type, inputs, name, outputs=1, domain=domain, **attrs)[0]

    # -- model ------------------------------------------------------------------------------
    def to_model(self, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid(MS_DOMAIN, MS_OPSET)],
            producer_name=PRODUCER,
        )
        model.ir_version = IR_VERSION
        for key, value in (metadata or {}).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, str(value)
        return model
