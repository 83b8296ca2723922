"""Post-training int8 quantization of the VAE decoder and encoder (`quantize_vae=True`), with NNCF.

The layers kept out are found by graph structure (`vae_layer_groups`); the default variant (`VaeQuantization`)
was chosen by measurement (`benchmarks/bench_vae.py`): the variants and their image quality are in
docs/quantization.md.
"""

from dataclasses import dataclass

import numpy as np

from .calibration import DEFAULT_VAE_NUM_SAMPLES
from .ir import quiet_nncf
from .transformer_quantization import compress_kept_out_weights, ignored_scope, is_constant

VAE_SUBMODELS = ("vae_decoder", "vae_encoder")  # quantized with `quantize_vae=True`, int8 weights otherwise
# Layer groups of the VAE kept out of quantization (see `vae_layer_groups`; chosen by measurement, see docs/quantization.md).
VAE_IGNORED_LAYERS = (
    "first_convolution", "last_convolution", "attention", "normalization", "residual_add", "lowest_resolution", "full_resolution"
)  # fmt: skip


def vae_layer_groups(ov_model) -> dict[str, list[str]]:
    """Names of a VAE decoder's or encoder's layers, by role, found from the graph's structure.

    Convolutions: `first_convolution` reads the model's input (latents or pixels); `last_convolution` makes its
    output (the image, or the latent distribution); `resampling` follow an upsampling (decoder) or are strided
    (encoder); `shortcut` are the 1x1 ones of residual branches that change the width. The others, each after a
    GroupNorm + SiLU, by resolution: `lowest_resolution` (the latents': the mid-block and the block next to it),
    `full_resolution` (the image's) and `residual` (in between). Other layers: `attention` (the mid-block's
    MatMuls and attention op), `normalization` (the GroupNorms) and `residual_add` (the Adds that join a residual
    branch to the stream, not the bias Adds); NNCF's default rules quantize the inputs of these last two.
    """
    ops = ov_model.get_ordered_ops()
    convolutions = [op for op in ops if op.get_type_name() == "Convolution"]
    groups = {
        "attention": [op for op in ops if op.get_type_name() in ("MatMul", "ScaledDotProductAttention", "Softmax")],
        "normalization": [op for op in ops if op.get_type_name() in ("GroupNormalization", "MVN")],
        "residual_add": [op for op in ops if op.get_type_name() == "Add" and not any(is_constant(source) for source in op.input_values())],
    }
    groups |= {name: [] for name in ("first_convolution", "last_convolution", "resampling", "shortcut", "lowest_resolution", "full_resolution", "residual")}
    resamplings = _resamplings_before(ops)
    deepest = max(resamplings.values())
    upsamples = any(op.get_type_name() == "Interpolate" for op in ops)  # a decoder: the resolution grows
    for op in convolutions:
        if op.input_value(0).get_node().get_type_name() == "Parameter":
            group = "first_convolution"
        elif op is convolutions[-1]:
            group = "last_convolution"
        elif _resamples(op) or op.input_value(0).get_node().get_type_name() == "Interpolate":
            group = "resampling"
        elif all(side == 1 for side in op.input_value(1).get_shape()[2:]):
            group = "shortcut"
        elif resamplings[op] == (0 if upsamples else deepest):
            group = "lowest_resolution"
        elif resamplings[op] == (deepest if upsamples else 0):
            group = "full_resolution"
        else:
            group = "residual"
        groups[group].append(op)
    return {name: [op.get_friendly_name() for op in members] for name, members in groups.items()}


def _resamples(op) -> bool:
    """True for an upsampling (Interpolate) or a strided Convolution."""
    return op.get_type_name() == "Interpolate" or (op.get_type_name() == "Convolution" and max(op.get_attributes()["strides"]) > 1)


def _resamplings_before(ordered_ops) -> dict:
    """op -> the number of resamplings on the longest path from the model's input to it (its output included)."""
    counts = {}
    for op in ordered_ops:
        before = max((counts[source.get_node()] for source in op.input_values()), default=0)
        counts[op] = before + _resamples(op)
    return counts


@dataclass(frozen=True)
class VaeQuantization:
    """How `quantize_vae_model` quantizes a VAE decoder or encoder; the defaults are the variant chosen by
    measurement (see docs/quantization.md and `benchmarks/bench_vae.py`)."""

    ignored_layers: tuple[str, ...] = VAE_IGNORED_LAYERS  # groups of `vae_layer_groups` kept in 16 bits (int8 weights)
    preset: str = "mixed"  # NNCF preset: "mixed" (asymmetric activations) or "performance" (symmetric)
    transformer_rules: bool = False  # model_type=TRANSFORMER: SmoothQuant on the MatMuls, attention inputs quantized
    bias_correction: bool = True  # NNCF's fast bias correction


def quantize_vae_model(ov_model, calibration_data: list[dict[str, np.ndarray]], *, settings: VaeQuantization = VaeQuantization()):
    """NNCF post-training int8 quantization of a VAE decoder's or encoder's weights and activations as
    `settings` says; the kept-out layers get int8 weight-only compression."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    with quiet_nncf():
        quantized = nncf.quantize(
            ov_model,
            nncf.Dataset(calibration_data),
            preset=nncf.QuantizationPreset(settings.preset),
            model_type=nncf.ModelType.TRANSFORMER if settings.transformer_rules else None,
            subset_size=len(calibration_data),
            ignored_scope=ignored_scope(vae_layer_groups(ov_model), groups=settings.ignored_layers),
            advanced_parameters=AdvancedQuantizationParameters(disable_bias_correction=not settings.bias_correction),
        )
    return compress_kept_out_weights(quantized)


def vae_calibration_settings(*, quantize_vae: bool, num_samples: int = DEFAULT_VAE_NUM_SAMPLES) -> dict | None:
    """What a folder records about its int8 VAE (None without `quantize_vae`): the calibration images and the
    layers kept out. Raises a ValueError naming `vae_num_samples` if it is not a positive integer."""
    if not quantize_vae:
        return None
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"`vae_num_samples` has to be a positive integer but is {num_samples!r}.")
    return {"num_samples": num_samples, "synthetic_images": num_samples, "ignored_layers": list(VaeQuantization().ignored_layers)}
