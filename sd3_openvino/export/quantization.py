"""Hybrid INT8 quantization of an SD3 OpenVINO model: an int8 transformer, int8 weights everywhere else.

`quantize_sd3(model_dir, output_dir)` reads a folder written by `sd3_helper.convert_sd3` (fp16 or fp32) and
writes the same layout with weight format "int8-hybrid":

- The MMDiT transformer does ~97% of a generation's arithmetic, so it gets NNCF post-training quantization
  (`nncf.quantize`, `model_type=TRANSFORMER`): weights and activations in int8, which the CPU runs on its
  int8 units (AMX / VNNI) instead of bf16 or f32 ones. Activation ranges come from calibration: we run our
  own `OVStableDiffusion3Pipeline` on the fp16 model with the prompts shipped in `prompts/` and record the
  transformer's inputs at every denoising step (`num_samples` calls, 200 by default as in the original
  openvino_notebooks tutorial; 28 steps at 512x512, guidance 5: about 7 prompts). Calibration needs no
  download, and the same `seed` gives the same prompts, latents, recorded inputs and quantized IR.
- Some layers are kept out of quantization (`TRANSFORMER_IGNORED_LAYERS`). They are found by the graph's
  structure, not by name, because torch.export names layers by a counter (`linear_17`) that moves with the
  number of layers:
    * the patch embedding (the only Convolution): it reads the raw latents, whose range changes with the
      noise level of the step, and the original tutorial found that quantizing it hurts the image;
    * the conditioning MatMuls (timestep and pooled-text MLP, every block's adaLN modulation): they run on one
      row per image, so int8 buys nothing, and their outputs scale, shift and gate every token, so their
      error reaches everything;
    * the output projection: its error lands directly in the predicted flow, and it is 0.1% of the FLOPs.
  Their weights get int8 weight-only compression instead. Everything else (attention projections, MLPs, the
  context embedding: all the work that grows with the number of tokens) is quantized. Measured PSNR against
  the fp16 pipeline's image (same seed): SD3-Medium-shaped 2-layer model, 512x512, 28 steps: 45.8-46.0 dB
  (int8 weights alone: 46.4 dB); tiny test model at f32: 49-52 dB, but 39-43 dB if the conditioning layers
  are quantized as well.
- The text encoders and the VAE get int8 weight-only compression (`sd3_conversion.compress_weights(...,
  weight_format="int8")`): their cost is a small share of a generation, and quantizing their activations
  costs accuracy (the original tutorial's finding), while int8 weights halve their size.
- `quantize_vae=True` quantizes the VAE decoder and encoder too (`quantize_vae_model`, off by default). The
  decoder is calibrated on what the pipeline feeds it: the final latents of `vae_num_samples` whole generations
  on the calibration prompts (same settings and seed scheme as the transformer's); the encoder on the pixels of
  those decoded images plus as many `synthetic_images` (gradients, shapes, noise textures), as no photos can be
  downloaded. Kept out, by graph structure (`vae_layer_groups`), by measurement on the SD3-Medium-shaped VAE
  (random weights; PSNR against the fp16 decoder, both in f32, held-out latents; `benchmarks/bench_vae.py`):
    * the inputs of the GroupNorms and of the residual Adds, which NNCF's default rules quantize (its transformer
      rules leave them alone too): quantizing them costs 4.3 dB (33.97 -> 38.25 dB at 256x256), for no speed;
    * the first and last convolutions and the mid-block attention (+0.24 dB together: cheap, kept as the
      transformer's patch embedding and output projection are);
    * the convolutions at the latents' resolution (mid-block and first up block: +1.1 dB, no measurable time)
      and at the image's (+0.6 dB, +13 % decode time); the middle resolutions stay int8. Chosen: 40.1 dB at
      256x256, 39.8 dB at 512x512, under the 40 dB aimed at, hence off by default.
  See README for the measured PSNR of every variant and the decode speed-up.

The output is written like `convert_sd3` writes: each submodel with `sd3_layout.staged_dir`,
`model_index.json` last, finished submodels skipped on the next call unless `overwrite=True`.
Every IR records "int8-hybrid" in its rt_info at `sd3_layout.RT_INFO_WEIGHT_FORMAT`.

Imports the layout, the runtime (calibration runs our pipeline) and conversion; never the facade `sd3_helper`.
"""

import gc
import hashlib
import random
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .conversion import (
    SUBMODEL_EXPORTS,
    checkpoint_fingerprint,
    compress_weights,
    conversion_record,
    convert_to_openvino,
    load_model_index_and_revision,
    lora_options,
    quiet_nncf,
    store_large_constants_in_fp16,
)
from ..core.layout import (
    CONFIG_JSON,
    COPIED_COMPONENTS,
    HYBRID_WEIGHT_FORMAT,
    MODEL_INDEX,
    OV_MODEL_XML,
    RT_INFO_WEIGHT_FORMAT,
    check_output_outside_source,
    has_component,
    is_converted,
    read_conversion_record,
    read_model_index,
    recorded_weight_format,
    refuse_other_conversion,
    refuse_other_weight_format,
    remove_stale_staging,
    removed_on_failure,
    staged_dir,
    write_conversion_record,
    write_json_atomically,
)
from ..runtime.image_processing import psnr
from ..runtime.lora import check_lora
from ..runtime.pipeline import OVStableDiffusion3Pipeline

SOURCE_WEIGHT_FORMATS = ("fp16", "fp32")  # quantization starts from unquantized weights
CALIBRATION_PROMPTS_FILE = Path(__file__).resolve().parent / "calibration_prompts.txt"
# Negative prompts drawn for calibration, as in the original tutorial, plus "" (the pipeline's default).
NEGATIVE_PROMPTS = (
    "",
    "blurry unreal occluded",
    "low contrast disfigured uncentered mangled",
    "amateur out of frame low quality nsfw",
    "ugly underexposed jpeg artifacts",
    "low saturation disturbing content",
    "overexposed severe distortion",
    "ugly mutilated out of frame disfigured",
)
CALIBRATION_STEPS = 28  # SD3 Medium's usual number of steps: the timesteps calibration sees are the ones used
CALIBRATION_GUIDANCE_SCALE = 5.0  # the tutorial's setting; with guidance the transformer sees batch 2 (CFG)
DEFAULT_NUM_SAMPLES = 200  # transformer calls recorded, as in the original openvino_notebooks tutorial
CALIBRATION_MAX_SIDE = 512  # pixels; the tutorial calibrates at 512x512: 1/4 of the activations of 1024x1024
# Layer groups kept out of quantization (see the module docstring and `transformer_ignored_scope`).
TRANSFORMER_IGNORED_LAYERS = ("patch_embedding", "conditioning", "output_projection")
VAE_SUBMODELS = ("vae_decoder", "vae_encoder")  # quantized with `quantize_vae=True`, int8 weights otherwise
DEFAULT_VAE_NUM_SAMPLES = 8  # whole generations whose final latents calibrate the decoder (+ as many synthetic images for the encoder)
# Layer groups of the VAE kept out of quantization (see `vae_layer_groups`; chosen by measurement, see above).
VAE_IGNORED_LAYERS = (
    "first_convolution", "last_convolution", "attention", "normalization", "residual_add", "lowest_resolution", "full_resolution"
)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# Calibration data
# ----------------------------------------------------------------------------------------------------------


def load_calibration_prompts(prompts_file: str | Path | None = None) -> list[str]:
    """The prompts of `prompts_file` (default: the shipped `prompts/calibration_prompts.txt`), one a line.

    Blank lines and lines starting with `#` are skipped.
    """
    path = Path(prompts_file) if prompts_file is not None else CALIBRATION_PROMPTS_FILE
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"`prompts_file` {str(path)!r} holds no prompts; write one prompt a line.")
    return prompts


class RecordingSubmodel:
    """Stands in for an `OVSubmodel`: runs it and keeps a copy of the inputs of its first `max_calls` calls.

    An input equal to the previous call's (the prompt embeddings, the same at every step of an image) is kept
    once and shared, so 200 samples of SD3 at 512x512 take ~0.2 GB instead of ~2 GB.
    """

    def __init__(self, submodel, *, max_calls: int):
        self.submodel = submodel
        self.max_calls = max_calls
        self.recorded: list[dict[str, np.ndarray]] = []

    @property
    def full(self) -> bool:
        return len(self.recorded) >= self.max_calls

    def __getattr__(self, name):  # config, name, model, ... of the wrapped submodel
        return getattr(self.submodel, name)

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        if not self.full:
            previous = self.recorded[-1] if self.recorded else {}
            self.recorded.append(
                {
                    name: previous[name] if name in previous and np.array_equal(previous[name], value) else np.array(value, copy=True)
                    for name, value in inputs.items()
                }
            )
        return self.submodel(**inputs)


def calibration_calls(prompts: list[str], *, seed: int, count: int) -> Iterator[tuple[str, str, torch.Generator]]:
    """(prompt, negative prompt, generator) of the first `count` calibration images: prompts in an order shuffled
    by `seed`, a negative prompt drawn from `NEGATIVE_PROMPTS`, latents seeded by `seed` and the position."""
    rng = random.Random(seed)
    order = rng.sample(range(len(prompts)), k=len(prompts))
    for position in range(count):
        yield prompts[order[position % len(order)]], rng.choice(NEGATIVE_PROMPTS), torch.Generator().manual_seed(seed * 1_000_003 + position)


def calibration_size(pipe, *, height: int | None, width: int | None) -> tuple[int, int]:
    """(height, width) of calibration images: the given ones, else the model's native size, at most
    `CALIBRATION_MAX_SIDE` pixels."""
    default = min(pipe.size_rules.default, CALIBRATION_MAX_SIDE)
    return height or default, width or default


@contextmanager
def recording(pipe, name: str, *, max_calls: int) -> Iterator[RecordingSubmodel]:
    """Wrap `pipe.<name>` in a `RecordingSubmodel` and turn the progress bar off for the block; restore both."""
    recorder = RecordingSubmodel(getattr(pipe, name), max_calls=max_calls)
    progress_config = pipe.progress_bar_config
    setattr(pipe, name, recorder)
    pipe.set_progress_bar_config(disable=True)
    try:
        yield recorder
    finally:
        setattr(pipe, name, recorder.submodel)
        pipe.set_progress_bar_config(**progress_config)


def collect_calibration_data(
    pipe,
    *,
    prompts: list[str],
    num_samples: int,
    seed: int = 0,
    num_inference_steps: int = CALIBRATION_STEPS,
    guidance_scale: float = CALIBRATION_GUIDANCE_SCALE,
    height: int | None = None,
    width: int | None = None,
) -> list[dict[str, np.ndarray]]:
    """Run `pipe` (an `OVStableDiffusion3Pipeline`) on `prompts` and return the inputs of its first
    `num_samples` transformer calls, one dict of named arrays per call.

    Prompts, negative prompts and latents come from `calibration_calls(prompts, seed=seed, ...)`, so the same
    arguments always give the same data. Images are not decoded, and the last image stops as soon as
    `num_samples` calls are recorded. `height` and `width` default to the model's native size, at most
    `CALIBRATION_MAX_SIDE` pixels. `pipe.transformer` is restored afterwards.
    """
    from tqdm.auto import tqdm

    if num_samples < 1:
        raise ValueError(f"`num_samples` has to be a positive integer but is {num_samples!r}.")
    height, width = calibration_size(pipe, height=height, width=width)

    def stop_when_full(running_pipe, step, timestep, callback_kwargs):
        progress.update(len(recorder.recorded) - progress.n)
        running_pipe._interrupt = recorder.full
        return callback_kwargs

    progress = tqdm(total=num_samples, desc="Collecting calibration data", unit="sample")
    with recording(pipe, "transformer", max_calls=num_samples) as recorder:
        try:
            # at least one sample per image, so this many images suffice
            for prompt, negative_prompt, generator in calibration_calls(prompts, seed=seed, count=num_samples):
                if recorder.full:
                    break
                pipe(
                    prompt,
                    negative_prompt=negative_prompt,
                    height=height,
                    width=width,
                    num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale,
                    generator=generator,
                    output_type="latent",
                    callback_on_step_end=stop_when_full,
                )
        finally:
            progress.close()
    return recorder.recorded


# ----------------------------------------------------------------------------------------------------------
# Quantizing the transformer
# ----------------------------------------------------------------------------------------------------------


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
    return _is_constant(op.input_value(1))


def _is_constant(output) -> bool:
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


# ----------------------------------------------------------------------------------------------------------
# Quantizing the VAE (`quantize_vae=True`)
# ----------------------------------------------------------------------------------------------------------


def synthetic_images(*, count: int, height: int, width: int, seed: int = 0) -> list:
    """`count` PIL images made offline from `seed`: a two-colour gradient, a few filled ellipses and rectangles,
    and noise at three scales (a texture), softened by a slight blur. With images the pipeline decodes, they
    stand in for the photos image-to-image is given, which cannot be downloaded here."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:1 : height * 1j, 0:1 : width * 1j]
    images = []
    for _ in range(count):
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * x + np.sin(angle) * y
        ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)  # (H, W) in [0, 1]
        start, end = rng.uniform(0, 255, size=(2, 3))
        image = Image.fromarray((start + (end - start) * ramp[..., None]).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.integers(2, 7)):
            box = [*sorted(rng.uniform(0, width, 2)), *sorted(rng.uniform(0, height, 2))]
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape((box[0], box[2], box[1], box[3]), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        pixels = np.asarray(image, dtype=np.float32)
        for scale, amplitude in ((32, 24.0), (8, 12.0), (1, 6.0)):  # coarse blotches to fine grain
            noise = rng.normal(size=(max(height // scale, 1), max(width // scale, 1), 3)).astype(np.float32)
            channels = [np.asarray(Image.fromarray(channel).resize((width, height), Image.BICUBIC)) for channel in noise.transpose(2, 0, 1)]
            pixels += amplitude * np.stack(channels, axis=-1)
        images.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius=0.7)))
    return images


def collect_vae_calibration_data(
    pipe,
    *,
    prompts: list[str],
    num_samples: int,
    seed: int = 0,
    num_inference_steps: int = CALIBRATION_STEPS,
    guidance_scale: float = CALIBRATION_GUIDANCE_SCALE,
    height: int | None = None,
    width: int | None = None,
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Calibration inputs of the VAE: `{"vae_decoder": [...], "vae_encoder": [...]}`, one dict of named arrays
    per sample.

    The decoder's: what `pipe` feeds it at the end of `num_samples` whole generations (the images of
    `calibration_calls(prompts, seed=seed, ...)`, at `height` x `width`, default as `collect_calibration_data`).
    The encoder's: the pixels of those decoded images and of as many `synthetic_images`, preprocessed as the
    image-to-image pipeline does. `pipe.vae_decoder` is restored afterwards.
    """
    from tqdm.auto import tqdm

    if num_samples < 1:
        raise ValueError(f"`num_samples` has to be a positive integer but is {num_samples!r}.")
    height, width = calibration_size(pipe, height=height, width=width)
    images = []
    with recording(pipe, "vae_decoder", max_calls=num_samples) as recorder:
        calls = calibration_calls(prompts, seed=seed, count=num_samples)
        for prompt, negative_prompt, generator in tqdm(calls, total=num_samples, desc="Collecting VAE calibration data", unit="image"):
            output = pipe(
                prompt,
                negative_prompt=negative_prompt,
                height=height,
                width=width,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                generator=generator,
            )
            images += output.images
    images += synthetic_images(count=num_samples, height=height, width=width, seed=seed)
    encoder_inputs = [{"sample": np.asarray(pipe.image_processor.preprocess(image, height=height, width=width), dtype=np.float32)} for image in images]  # float32 numpy
    return {"vae_decoder": recorder.recorded, "vae_encoder": encoder_inputs}


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
        "residual_add": [op for op in ops if op.get_type_name() == "Add" and not any(_is_constant(source) for source in op.input_values())],
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
    measurement (see the module docstring and `benchmarks/bench_vae.py`)."""

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


# ----------------------------------------------------------------------------------------------------------
# The whole model
# ----------------------------------------------------------------------------------------------------------


def _check_source(model_dir: Path, submodels: list[str]) -> None:
    """`model_dir` must be a finished fp16 or fp32 conversion with a transformer."""
    if not (model_dir / MODEL_INDEX).is_file() or not is_converted(model_dir / "transformer"):
        raise FileNotFoundError(
            f"`model_dir` {str(model_dir)!r} is not a finished OpenVINO SD3 folder (it needs `{MODEL_INDEX}` and "
            "`transformer/`). Convert the checkpoint first: `convert_sd3(checkpoint, model_dir, weight_format='fp16')`."
        )
    for name in submodels:
        recorded = recorded_weight_format(model_dir / name)
        if recorded not in SOURCE_WEIGHT_FORMATS:
            raise ValueError(
                f"`{model_dir / name}` has weight_format={recorded!r}; quantization needs one of {list(SOURCE_WEIGHT_FORMATS)}. "
                "Pass the folder of an fp16 conversion: `convert_sd3(checkpoint, model_dir, weight_format='fp16')`."
            )


def _save_submodel(ov_model, *, model_dir: Path, output_dir: Path, name: str) -> None:
    """Save an IR plus its `config.json` into a staging folder, then publish it as `output_dir / name`."""
    import openvino as ov

    ov_model.set_rt_info(HYBRID_WEIGHT_FORMAT, RT_INFO_WEIGHT_FORMAT)
    with staged_dir(output_dir / name) as staging:
        ov.save_model(ov_model, staging / OV_MODEL_XML, compress_to_fp16=True)
        shutil.copy2(model_dir / name / CONFIG_JSON, staging / CONFIG_JSON)


def _calibration_data(collect, model_dir: Path, *, calibration: dict, device: str, ov_config: dict | None, **overrides):
    """`collect(pipe, **calibration, **overrides)` with the fp16 pipeline of `model_dir`, freed afterwards."""
    pipe = OVStableDiffusion3Pipeline.from_pretrained(model_dir, device=device, ov_config=ov_config, compile=False)
    pipe.set_progress_bar_config(disable=True)
    data = collect(pipe, **{**calibration, **overrides})
    del pipe  # frees the compiled models before NNCF compiles its own
    gc.collect()
    return data


def _quantized_transformer(model_dir: Path, *, calibration: dict, device: str, ov_config: dict | None):
    """Collect calibration data with the fp16 pipeline of `model_dir`, then quantize its transformer."""
    import openvino as ov

    calibration_data = _calibration_data(collect_calibration_data, model_dir, calibration=calibration, device=device, ov_config=ov_config)
    ov_model = ov.Core().read_model(model_dir / "transformer" / OV_MODEL_XML)
    return quantize_transformer(ov_model, calibration_data)


def quantize_sd3(
    model_dir: str | Path,
    output_dir: str | Path,
    *,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int = 0,
    prompts_file: str | Path | None = None,
    num_inference_steps: int = CALIBRATION_STEPS,
    guidance_scale: float = CALIBRATION_GUIDANCE_SCALE,
    height: int | None = None,
    width: int | None = None,
    quantize_vae: bool = False,
    vae_num_samples: int = DEFAULT_VAE_NUM_SAMPLES,
    device: str = "CPU",
    ov_config: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an "int8-hybrid" copy of the fp16 / fp32 OpenVINO SD3 folder `model_dir` to `output_dir`.

    The transformer is quantized to int8 (weights and activations) with ranges calibrated on `num_samples`
    transformer calls of our pipeline running `model_dir` on the prompts of `prompts_file` (default: the
    shipped `prompts/calibration_prompts.txt`) with `num_inference_steps` steps and `guidance_scale`, at
    `height` x `width` (default: the native size, at most 512 pixels), on `device` with OpenVINO properties
    `ov_config`; `seed` fixes the prompts, negative prompts and latents. The other submodels get int8 weights.
    With `quantize_vae=True` the VAE decoder and encoder are quantized too (`quantize_vae_model`), calibrated on
    `vae_num_samples` whole generations of the same settings (see `collect_vae_calibration_data`).
    See the module docstring for the choices.

    The folder is written atomically (staging folders, `model_index.json` last), in the layout `convert_sd3`
    writes; finished submodels are kept unless `overwrite=True`. Returns `output_dir`.
    """
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    submodels = [item.name for item in SUBMODEL_EXPORTS if is_converted(model_dir / item.name)]
    _check_source(model_dir, submodels)
    if model_dir.resolve() == output_dir.resolve():
        raise ValueError(f"`output_dir` must differ from `model_dir` ({str(model_dir)!r}): the fp16 models are read while writing.")
    check_output_outside_source(model_dir, output_dir)
    calibration = calibration_settings(
        prompts_file=prompts_file,
        num_samples=num_samples,
        seed=seed,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        height=height,
        width=width,
    )
    vae_calibration = vae_calibration_settings(quantize_vae=quantize_vae, num_samples=vae_num_samples)
    source_record = read_conversion_record(model_dir) or {"source": {"folder_fingerprint": checkpoint_fingerprint(model_dir)}}
    record = hybrid_record(source_record, calibration=calibration, vae_calibration=vae_calibration)
    finished = set() if overwrite else {name for name in submodels if is_converted(output_dir / name)}
    refuse_other_weight_format(output_dir, sorted(finished), weight_format=HYBRID_WEIGHT_FORMAT)
    if not overwrite:
        refuse_other_conversion(output_dir, record)
    with removed_on_failure(output_dir):
        remove_stale_staging(output_dir)
        (output_dir / MODEL_INDEX).unlink(missing_ok=True)  # the folder is incomplete until the end
        write_conversion_record(output_dir, record)
        _quantize_submodels(
            model_dir,
            output_dir,
            submodels=submodels,
            finished=finished,
            calibration=calibration,
            vae_calibration=vae_calibration,
            device=device,
            ov_config=ov_config,
        )
        for name in COPIED_COMPONENTS:
            if (model_dir / name).is_dir() and (overwrite or not (output_dir / name).is_dir()):
                with staged_dir(output_dir / name) as staging:
                    shutil.copytree(model_dir / name, staging, dirs_exist_ok=True)
    write_json_atomically(read_model_index(model_dir), output_dir / MODEL_INDEX)
    return output_dir


def calibration_settings(
    *,
    prompts_file: str | Path | None = None,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int = 0,
    num_inference_steps: int = CALIBRATION_STEPS,
    guidance_scale: float = CALIBRATION_GUIDANCE_SCALE,
    height: int | None = None,
    width: int | None = None,
) -> dict:
    """The keyword arguments of `collect_calibration_data` (the prompts read from `prompts_file`), with
    `quantize_sd3`'s defaults."""
    return dict(
        prompts=load_calibration_prompts(prompts_file),
        num_samples=num_samples,
        seed=seed,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        height=height,
        width=width,
    )


def vae_calibration_settings(*, quantize_vae: bool, num_samples: int = DEFAULT_VAE_NUM_SAMPLES) -> dict | None:
    """What a folder records about its int8 VAE (None without `quantize_vae`): the calibration images and the
    layers kept out. Raises a ValueError naming `vae_num_samples` if it is not a positive integer."""
    if not quantize_vae:
        return None
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"`vae_num_samples` has to be a positive integer but is {num_samples!r}.")
    return {"num_samples": num_samples, "synthetic_images": num_samples, "ignored_layers": list(VaeQuantization().ignored_layers)}


def hybrid_record(source_record: dict, *, calibration: dict, vae_calibration: dict | None = None) -> dict:
    """The conversion record of an int8-hybrid folder: the fp16 folder's source, its options with weight_format
    int8-hybrid, and the calibration settings (the prompts as a digest); with an int8 VAE, `quantize_vae: true`
    and `vae_calibration` (see `vae_calibration_settings`)."""
    prompts_digest = hashlib.sha256("\n".join(calibration["prompts"]).encode()).hexdigest()
    settings = {key: value for key, value in calibration.items() if key != "prompts"} | {"prompts_sha256": prompts_digest}
    options = {**source_record.get("options", {}), "weight_format": HYBRID_WEIGHT_FORMAT, "calibration": settings}
    if vae_calibration is not None:  # absent otherwise, so folders written before the option keep their record
        options |= {"quantize_vae": True, "vae_calibration": vae_calibration}
    return {"source": source_record.get("source", {}), "options": options}


def _quantize_submodels(
    model_dir: Path,
    output_dir: Path,
    *,
    submodels: list[str],
    finished: set,
    calibration: dict,
    vae_calibration: dict | None,
    device: str,
    ov_config: dict | None,
) -> None:
    """Quantize the transformer (and with `vae_calibration` the VAE), compress the other submodels' weights,
    those not in `finished`."""
    import openvino as ov
    from tqdm.auto import tqdm

    vae_data = {}  # collected once, when the first VAE submodel needs it
    progress = tqdm(submodels, desc="Quantizing SD3 (int8-hybrid)", unit="submodel")
    for name in progress:
        progress.set_postfix_str(name)
        if name in finished:
            tqdm.write(f"{name}: already quantized, skipped")
            continue
        if name == "transformer":
            ov_model = _quantized_transformer(model_dir, calibration=calibration, device=device, ov_config=ov_config)
        elif vae_calibration is not None and name in VAE_SUBMODELS:
            vae_data = vae_data or _calibration_data(
                collect_vae_calibration_data,
                model_dir,
                calibration=calibration,
                device=device,
                ov_config=ov_config,
                num_samples=vae_calibration["num_samples"],
            )
            ov_model = quantize_vae_model(ov.Core().read_model(model_dir / name / OV_MODEL_XML), vae_data[name])
        else:
            ov_model = ov.Core().read_model(model_dir / name / OV_MODEL_XML)
            ov_model = compress_weights(ov_model, submodel=name, weight_format="int8")
        _save_submodel(ov_model, model_dir=model_dir, output_dir=output_dir, name=name)
        del ov_model
        gc.collect()


def convert_sd3_hybrid(
    checkpoint: str | Path,
    output_dir: str | Path,
    *,
    load_t5: bool = True,
    quantize_vae: bool = False,
    lora: list[tuple[str | Path, float]] | None = None,
    overwrite: bool = False,
) -> Path:
    """int8-hybrid straight from a checkpoint: an fp16 conversion kept aside (resumable), then `quantize_sd3`
    with its defaults (and `quantize_vae`). A finished folder of the same source and options is kept; one of
    another is refused unless `overwrite=True`. Returns `output_dir`."""
    output_dir = Path(output_dir)
    check_output_outside_source(checkpoint, output_dir)
    if (output_dir / MODEL_INDEX).is_file() and not overwrite:
        model_index, revision = load_model_index_and_revision(checkpoint)
        has_t5 = load_t5 and has_component(model_index, "text_encoder_3")
        lora = check_lora(lora)
        options = {"weight_format": "fp16", "load_t5": has_t5, **({"lora": lora_options(lora)} if lora else {})}
        source = conversion_record(checkpoint, revision=revision, options=options)
        record = hybrid_record(source, calibration=calibration_settings(), vae_calibration=vae_calibration_settings(quantize_vae=quantize_vae))
        refuse_other_conversion(output_dir, record)
        return output_dir  # quantize_sd3 writes model_index.json last: the folder is complete
    fp16_source = output_dir.with_name(f".{output_dir.name}.fp16-source")  # beside, not inside: quantize_sd3 refuses a
    convert_to_openvino(checkpoint, fp16_source, load_t5=load_t5, weight_format="fp16", lora=lora, overwrite=overwrite)  # source in its output
    quantize_sd3(fp16_source, output_dir, quantize_vae=quantize_vae, overwrite=overwrite)
    shutil.rmtree(fp16_source)
    return output_dir
