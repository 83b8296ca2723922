"""Post-training int8 quantization of the MMDiT transformer (weights and activations), with NNCF.

Some layers are kept out of quantization (`TRANSFORMER_IGNORED_LAYERS`). They are found by the graph's
structure, not by name, because torch.export names layers by a counter (`linear_17`) that moves with the number
of layers: the patch embedding, the conditioning MatMuls (timestep and pooled-text MLP, every block's adaLN
modulation) and the output projection. Their weights get int8 weight-only compression instead. Which layers and
why, with the measured image quality: docs/quantization.md.
"""

import numpy as np

from .ir import quiet_nncf, store_large_constants_in_fp16

# Layer groups kept out of quantization (see `layer_groups` and docs/quantization.md).
TRANSFORMER_IGNORED_LAYERS = ("patch_embedding", "conditioning", "output_projection")


def layer_groups(ov_model) -> dict[str, list[str]]:
    """Names of the transformer's weighted layers, by role, found from the graph's structure.

    `patch_embedding`: the Convolution that turns latents into tokens. `conditioning`: MatMuls on 2D
    activations, one row per image (timestep / pooled-text embedding, adaLN modulation). `context_embedding`:
    the MatMul on the `encoder_hidden_states` input. `output_projection`: the last MatMul before the output.
    `tokens`: every other MatMul with a weight (attention projections, MLPs).
    """
    groups = {name: [] for name in ("patch_embedding", "conditioning", "context_embedding", "output_projection", "tokens")}
    matmuls = []
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() == "Convolution":
            groups["patch_embedding"].append(op.get_friendly_name())
        elif op.get_type_name() == "MatMul" and _has_constant_weight(op):
            matmuls.append(op)
    for op in matmuls:
        activation = op.input_value(0)
        if activation.get_partial_shape().rank.get_length() == 2:
            groups["conditioning"].append(op.get_friendly_name())
        elif activation.get_node().get_type_name() == "Parameter":
            groups["context_embedding"].append(op.get_friendly_name())
        elif op is matmuls[-1]:
            groups["output_projection"].append(op.get_friendly_name())
        else:
            groups["tokens"].append(op.get_friendly_name())
    return groups


def _has_constant_weight(op) -> bool:
    """True when the MatMul's second input is a Constant, possibly through decompression (Convert, ...)."""
    return is_constant(op.input_value(1))


def is_constant(output) -> bool:
    """True when `output` comes from a Constant, possibly through decompression (Convert, Reshape, ...)."""
    node = output.get_node()
    while node.get_type_name() in ("Convert", "Subtract", "Multiply", "Reshape", "Transpose") and node.get_input_size():
        node = node.input_value(0).get_node()
    return node.get_type_name() == "Constant"


def ignored_scope(by_group: dict[str, list[str]], *, groups: tuple[str, ...]):
    """An `nncf.IgnoredScope` naming the layers of `groups`, from a `{group: layer names}` dict."""
    import nncf

    unknown = set(groups) - set(by_group)
    if unknown:
        raise ValueError(f"`groups` has unknown layer groups {sorted(unknown)}; choose from {sorted(by_group)}.")
    return nncf.IgnoredScope(names=[name for group in groups for name in by_group[group]])


def transformer_ignored_scope(ov_model, *, groups: tuple[str, ...] = TRANSFORMER_IGNORED_LAYERS):
    """An `nncf.IgnoredScope` naming the transformer layers of `groups` (see `layer_groups`)."""
    return ignored_scope(layer_groups(ov_model), groups=groups)


def compress_kept_out_weights(quantized_model):
    """int8 weight-only compression of the layers `nncf.quantize` kept out (the quantized ones hold int8 weights
    already), and the remaining large f32 constants stored in f16."""
    import nncf

    with quiet_nncf():
        compressed = nncf.compress_weights(quantized_model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    return store_large_constants_in_fp16(compressed)


def quantize_transformer(
    ov_model,
    calibration_data: list[dict[str, np.ndarray]],
    *,
    ignored_layers: tuple[str, ...] = TRANSFORMER_IGNORED_LAYERS,
    smooth_quant_alpha: float | None = None,
):
    """NNCF post-training int8 quantization of the transformer's weights and activations, except the layers of
    `ignored_layers` (see `layer_groups`), whose weights get int8 weight-only compression instead.

    `smooth_quant_alpha` overrides NNCF's SmoothQuant strength for MatMuls (a negative value disables it).
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    advanced = AdvancedQuantizationParameters()
    if smooth_quant_alpha is not None:
        advanced = AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=smooth_quant_alpha))
    with quiet_nncf():
        quantized = nncf.quantize(
            ov_model,
            nncf.Dataset(calibration_data),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(calibration_data),
            ignored_scope=transformer_ignored_scope(ov_model, groups=ignored_layers),
            advanced_parameters=advanced,
        )
    return compress_kept_out_weights(quantized)
