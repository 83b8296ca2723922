"""Post-processing an exported OpenVINO model: weight compression (NNCF), large constants stored in f16, linear
layers named by their module path, and inputs turned into OpenVINO states."""

import logging
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from ..core.layout import block_output_name, linear_node_name


# int4 settings per submodel. The MMDiT and T5 hold ~97% of SD3's weights, so they get 4 bits; NNCF keeps
# their embeddings and last layer at int8 (all_layers=False) and, for the transformer, the 20% of layers with
# the largest 4-bit error too (ratio 0.8), because the denoiser's errors accumulate over every step. A group
# of 64 input channels divides SD3's widths (1536, 4096) and is more accurate than 128 at ~3% size cost.
# The CLIP encoders (small, and their pooled output steers the whole image) and the VAE (convolutions, which
# NNCF compresses to 8 bits only) stay int8.
INT4_SETTINGS = {
    "transformer": {"ratio": 0.8, "group_size": 64},
    "controlnet": {"ratio": 0.8, "group_size": 64},  # a ControlNet is a few MMDiT blocks: the transformer's choice
    "text_encoder_3": {"ratio": 1.0, "group_size": 64},
}


def compress_weights(ov_model, *, submodel: str, weight_format: str):
    """Compress an `openvino.Model`'s weights for `weight_format` (see `INT4_SETTINGS` for the int4 choices).

    fp32 and fp16 return the model unchanged (fp16 is applied when saving); int8 is NNCF's asymmetric per-channel
    8-bit weight compression; int4 is symmetric 4-bit with groups for the transformer and T5, int8 elsewhere.
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    if weight_format in ("fp32", "fp16"):
        return ov_model
    if weight_format == "int4" and submodel in INT4_SETTINGS:
        with quiet_nncf():
            compressed = nncf.compress_weights(
                ov_model,
                mode=nncf.CompressWeightsMode.INT4_SYM,
                **INT4_SETTINGS[submodel],
                # Widths not divisible by the group get the largest power-of-two group that divides them.
                advanced_parameters=AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode.ADJUST),
            )
    else:
        with quiet_nncf():
            compressed = nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    return store_large_constants_in_fp16(compressed)


@contextmanager
def quiet_nncf() -> Iterator[None]:
    """Keep NNCF's per-layer INFO chatter and bit-width tables out of the output; its warnings stay."""
    from nncf.common.logging import nncf_logger

    level = nncf_logger.level
    nncf_logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        nncf_logger.setLevel(level)


def store_large_constants_in_fp16(ov_model, *, min_bytes: int = 16 * 1024):
    """Store the large f32 constants NNCF leaves alone (buffers such as SD3's position-embedding table) as
    f16 + Convert, as `save_model(compress_to_fp16=True)` does for an uncompressed model but skips
    once a model holds compressed weights."""
    import openvino as ov
    import openvino.opset13 as opset

    for op in ov_model.get_ops():
        if op.get_type_name() != "Constant" or op.get_output_element_type(0) != ov.Type.f32 or op.get_byte_size() < min_bytes:
            continue
        data = op.get_data()
        if np.abs(data).max() >= np.finfo(np.float16).max:
            continue  # would overflow in f16
        decompressed = opset.convert(opset.constant(data.astype(np.float16)), ov.Type.f32)
        for target in list(op.output(0).get_target_inputs()):
            target.replace_source_output(decompressed.output(0))
    ov_model.validate_nodes_and_infer_types()
    return ov_model


def name_linear_layers(ov_model, program, *, module: torch.nn.Module, module_names: dict[int, str]) -> None:
    """Name each `nn.Linear`'s MatMul in `ov_model` by its module path (`linear_node_name`).

    `torch.export` names ops after graph nodes (`linear_3/aten.linear.default/MatMul`); the module that ran each
    linear is in the node's `nn_module_stack`, as a path in the traced wrapper `module`, which `module_names`
    maps back to the path in the diffusers / transformers model (where LoRA adapters name their layers).
    """
    paths = {}
    for node in program.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op == "call_function" and node.target is torch.ops.aten.linear.default and stack:
            wrapper_path = list(stack.values())[-1][0]
            name = module_names.get(id(module.get_submodule(wrapper_path)))
            if name:
                paths[node.name] = name
    for op in ov_model.get_ops():
        graph_node = op.get_friendly_name().split("/")[0]
        if op.get_type_name() == "MatMul" and graph_node in paths:
            op.set_friendly_name(linear_node_name(paths[graph_node]))


def name_block_outputs(ov_model, program, *, block_paths: dict[str, int]) -> None:
    """Name the op that gives each gated transformer block's image stream `block_output_name(index)`.

    `block_paths` maps the traced wrapper's path of each `GatedBlock` to its index. The block's first `torch.where`
    (in graph order) selects its image stream (`GatedBlock.forward`); its `Select` op in `ov_model` is renamed, so a
    runtime can add ControlNet residuals after it without this module (`runtime/controlnet.py`).
    """
    names = {}
    for node in program.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op == "call_function" and node.target is torch.ops.aten.where.self and stack:
            index = block_paths.get(list(stack.values())[-1][0])
            if index is not None and index not in names.values():
                names[node.name] = index
    for op in ov_model.get_ops():
        graph_node = op.get_friendly_name().split("/")[0]
        if op.get_type_name() == "Select" and graph_node in names:
            op.set_friendly_name(block_output_name(names[graph_node]))


def parameter_to_state(ov_model, *, name: str, initial: np.ndarray):
    """The model with its input `name` replaced by an OpenVINO state (ReadValue + Assign) that starts at `initial`:
    callers that never set it get `initial`; `infer_request.query_state()` sets it for a call."""
    import openvino as ov
    from openvino import opset13 as ops
    from openvino.op.util import Variable, VariableInfo

    parameter = next(p for p in ov_model.get_parameters() if name in p.output(0).get_names())
    info = VariableInfo()
    info.data_shape, info.data_type, info.variable_id = ov.PartialShape(list(initial.shape)), ov.Type.f32, name
    variable = Variable(info)
    read = ops.read_value(ops.constant(initial.astype(np.float32)), variable)
    for target in list(parameter.output(0).get_target_inputs()):
        target.replace_source_output(read.output(0))
    parameters = [p for p in ov_model.get_parameters() if p is not parameter]
    sinks = list(ov_model.get_sinks()) + [ops.assign(read, variable)]
    return ov.Model(ov_model.get_results(), sinks, parameters, list(ov_model.get_variables()) + [variable], ov_model.get_friendly_name())
