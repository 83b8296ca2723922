"""Hybrid INT8 quantization of an SD3 OpenVINO model: an int8 transformer, int8 weights everywhere else.

`quantize_sd3(model_dir, output_dir)` reads a folder written by `sd3_helper.convert_sd3` (fp16 or fp32) and
writes the same layout with weight format "int8-hybrid":

- the MMDiT transformer gets NNCF post-training quantization, weights and activations in int8
  (`transformer_quantization.py`), with activation ranges calibrated on the inputs our own pipeline gives it
  on the shipped prompts (`calibration.py`); a few layer groups are kept out and get int8 weights instead;
- the text encoders and the VAE get int8 weight-only compression (`ir.compress_weights`);
- with `quantize_vae=True` the VAE decoder and encoder are quantized too (`vae_quantization.py`).

What is kept out of quantization and why, and the image quality measured for each choice: docs/quantization.md.

The output is written inside `core.files.model_folder`, as a conversion is: each submodel staged and
published when complete, `model_index.json` last, finished submodels skipped on the next call unless
`overwrite=True`. Every IR records "int8-hybrid" in its rt_info at `RT_INFO_WEIGHT_FORMAT`.

This module is the int8 API's one import place: it also offers the calibration and layer-group functions it is
built on (see `__all__`). It imports the layout, the runtime (calibration runs our pipeline) and conversion;
never the facade `sd3_helper`.
"""

import gc
import shutil
from pathlib import Path

from ..core.files import ModelFolder, check_output_outside_source, model_folder, refuse_other_conversion
from ..core.layout import (
    CONFIG_JSON,
    COPIED_COMPONENTS,
    HYBRID_WEIGHT_FORMAT,
    MODEL_INDEX,
    OV_MODEL_XML,
    RT_INFO_WEIGHT_FORMAT,
    has_component,
    is_converted,
    read_conversion_record,
    read_model_index,
    recorded_weight_format,
)
from ..runtime.lora import check_lora
from ..runtime.pipeline import OVStableDiffusion3Pipeline
from .calibration import (
    CALIBRATION_GUIDANCE_SCALE,
    CALIBRATION_STEPS,
    DEFAULT_NUM_SAMPLES,
    DEFAULT_VAE_NUM_SAMPLES,
    calibration_calls,
    calibration_settings,
    collect_calibration_data,
    collect_vae_calibration_data,
    load_calibration_prompts,
    synthetic_images,
)
from .conversion import convert_to_openvino
from .ir import compress_weights
from .loading import load_model_index_and_revision
from .modules import SUBMODEL_EXPORTS
from .records import checkpoint_fingerprint, conversion_record, hybrid_record
from .transformer_quantization import (
    TRANSFORMER_IGNORED_LAYERS,
    ignored_scope,
    layer_groups,
    quantize_transformer,
    transformer_ignored_scope,
)
from .vae_quantization import (
    VAE_IGNORED_LAYERS,
    VAE_SUBMODELS,
    VaeQuantization,
    quantize_vae_model,
    vae_calibration_settings,
    vae_layer_groups,
)

SOURCE_WEIGHT_FORMATS = ("fp16", "fp32")  # quantization starts from unquantized weights


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


def _calibration_data(collect, model_dir: Path, *, calibration: dict, device: str, ov_config: dict | None, **overrides):
    """`collect(pipe, **calibration, **overrides)` with the fp16 pipeline of `model_dir`, freed afterwards."""
    # the IR's own inputs, unfolded: the graph being quantized is the converted one, without `text_attention_bias`
    pipe = OVStableDiffusion3Pipeline.from_pretrained(model_dir, device=device, ov_config=ov_config, compile=False, fold_text_padding=False)
    pipe.set_progress_bar_config(disable=True)
    data = collect(pipe, **{**calibration, **overrides})
    del pipe  # frees the compiled models before NNCF compiles its own
    gc.collect()
    return data


def _quantized_transformer(model_dir: Path, *, calibration: dict, smooth_quant_alpha: float | None, device: str, ov_config: dict | None):
    """Collect calibration data with the fp16 pipeline of `model_dir`, then quantize its transformer."""
    import openvino as ov

    calibration_data = _calibration_data(collect_calibration_data, model_dir, calibration=calibration, device=device, ov_config=ov_config)
    ov_model = ov.Core().read_model(model_dir / "transformer" / OV_MODEL_XML)
    return quantize_transformer(ov_model, calibration_data, smooth_quant_alpha=smooth_quant_alpha)


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
    smooth_quant_alpha: float | None = None,
    device: str = "CPU",
    ov_config: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an "int8-hybrid" copy of the fp16 / fp32 OpenVINO SD3 folder `model_dir` to `output_dir`.

    The transformer is quantized to int8 (weights and activations) with ranges calibrated on `num_samples`
    transformer calls of our pipeline running `model_dir` on the prompts of `prompts_file` (default: the
    shipped `calibration_prompts.txt`) with `num_inference_steps` steps and `guidance_scale`, at
    `height` x `width` (default: the native size, at most `CALIBRATION_MAX_SIDE` pixels), on `device` with
    OpenVINO properties `ov_config`; `seed` fixes the prompts, negative prompts and latents. The other submodels
    get int8 weights. With `quantize_vae=True` the VAE decoder and encoder are quantized too
    (`quantize_vae_model`), calibrated on `vae_num_samples` whole generations of the same settings (see
    `collect_vae_calibration_data`). `smooth_quant_alpha` overrides NNCF's SmoothQuant strength for the transformer's
    MatMuls; a negative value turns SmoothQuant off, which at SD3 Medium's full depth keeps the peak memory under what a
    24 GB machine has (SmoothQuant's rescaled weights are a second copy). The choices are explained in docs/quantization.md.

    The folder is written atomically (staging folders, `model_index.json` last), in the layout `convert_sd3`
    writes; finished submodels are kept unless `overwrite=True`. Returns `output_dir`.
    """
    if smooth_quant_alpha is not None and (isinstance(smooth_quant_alpha, bool) or not isinstance(smooth_quant_alpha, (int, float)) or smooth_quant_alpha > 1):
        raise ValueError(
            f"`smooth_quant_alpha` has to be None (NNCF's default), a number up to 1, or negative (SmoothQuant off) but is {smooth_quant_alpha!r:.80}."
        )
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
    record = hybrid_record(source_record, calibration=calibration, vae_calibration=vae_calibration, smooth_quant_alpha=smooth_quant_alpha)
    with model_folder(
        output_dir,
        record=record,
        model_index=read_model_index(model_dir),
        submodels=submodels,
        weight_format=HYBRID_WEIGHT_FORMAT,
        overwrite=overwrite,
    ) as folder:
        quantize_kwargs = dict(calibration=calibration, vae_calibration=vae_calibration, smooth_quant_alpha=smooth_quant_alpha, device=device, ov_config=ov_config)
        _quantize_submodels(model_dir, folder, submodels=submodels, **quantize_kwargs)
        for name in COPIED_COMPONENTS:
            if (model_dir / name).is_dir() and folder.needs_component(name):
                with folder.submodel(name) as staging:
                    shutil.copytree(model_dir / name, staging, dirs_exist_ok=True)
    return output_dir


def _quantize_submodels(
    model_dir: Path,
    folder: ModelFolder,
    *,
    submodels: list[str],
    calibration: dict,
    vae_calibration: dict | None,
    smooth_quant_alpha: float | None,
    device: str,
    ov_config: dict | None,
) -> None:
    """Quantize the transformer (and with `vae_calibration` the VAE), compress the other submodels' weights,
    those `folder` does not hold yet; each is saved with its `config.json` into `folder`."""
    import openvino as ov
    from tqdm.auto import tqdm

    vae_data = {}  # collected once, when the first VAE submodel needs it
    progress = tqdm(submodels, desc="Quantizing SD3 (int8-hybrid)", unit="submodel")
    for name in progress:
        progress.set_postfix_str(name)
        if folder.is_finished(name):
            tqdm.write(f"{name}: already quantized, skipped")
            continue
        if name == "transformer":
            ov_model = _quantized_transformer(model_dir, calibration=calibration, smooth_quant_alpha=smooth_quant_alpha, device=device, ov_config=ov_config)
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
        ov_model.set_rt_info(HYBRID_WEIGHT_FORMAT, RT_INFO_WEIGHT_FORMAT)
        with folder.submodel(name) as staging:
            ov.save_model(ov_model, staging / OV_MODEL_XML, compress_to_fp16=True)
            shutil.copy2(model_dir / name / CONFIG_JSON, staging / CONFIG_JSON)
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
        model_index, revision = load_model_index_and_revision(checkpoint, load_t5=load_t5)
        has_t5 = load_t5 and has_component(model_index, "text_encoder_3")
        fp16_record = conversion_record(checkpoint, revision=revision, weight_format="fp16", load_t5=has_t5, lora=check_lora(lora))
        vae_calibration = vae_calibration_settings(quantize_vae=quantize_vae)
        refuse_other_conversion(output_dir, hybrid_record(fp16_record, calibration=calibration_settings(), vae_calibration=vae_calibration))
        return output_dir  # quantize_sd3 writes model_index.json last: the folder is complete
    fp16_source = output_dir.with_name(f".{output_dir.name}.fp16-source")  # beside, not inside: quantize_sd3 refuses a
    convert_to_openvino(checkpoint, fp16_source, load_t5=load_t5, weight_format="fp16", lora=lora, overwrite=overwrite)  # source in its output
    quantize_sd3(fp16_source, output_dir, quantize_vae=quantize_vae, overwrite=overwrite)
    shutil.rmtree(fp16_source)
    return output_dir


__all__ = [  # the int8 API, from the modules it is built on
    "CALIBRATION_GUIDANCE_SCALE",
    "CALIBRATION_STEPS",
    "DEFAULT_NUM_SAMPLES",
    "DEFAULT_VAE_NUM_SAMPLES",
    "SOURCE_WEIGHT_FORMATS",
    "TRANSFORMER_IGNORED_LAYERS",
    "VAE_IGNORED_LAYERS",
    "VAE_SUBMODELS",
    "VaeQuantization",
    "calibration_calls",
    "calibration_settings",
    "collect_calibration_data",
    "collect_vae_calibration_data",
    "convert_sd3_hybrid",
    "ignored_scope",
    "layer_groups",
    "load_calibration_prompts",
    "quantize_sd3",
    "quantize_transformer",
    "quantize_vae_model",
    "synthetic_images",
    "transformer_ignored_scope",
    "vae_layer_groups",
]
