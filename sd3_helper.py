"""Stable Diffusion 3 with OpenVINO: convert a checkpoint, run it with a small OpenVINO pipeline.

The one place to import the project's API from:

    from sd3_helper import make_tiny_sd3, load_sd3_pipeline, convert_sd3, OVStableDiffusion3Pipeline

    convert_sd3("stabilityai/stable-diffusion-3-medium-diffusers", "sd3-ov", weight_format="int8")
    pipe = OVStableDiffusion3Pipeline.from_pretrained("sd3-ov", device="CPU")
    image = pipe("a photo of a cat", num_inference_steps=28, generator=torch.Generator().manual_seed(42)).images[0]

The modules behind it, each importing only those above it in this list:

    sd3_presets       the SD3 / SD3.5 checkpoints and their recommended settings (imports nothing)
    sd3_layout        the converted folder: file names, weight formats, safe writes, size rules, defaults
    sd3_steps         what changes a step: TaylorSeer step caching, skip-layer guidance
    sd3_noise, sd3_scheduler, sd3_image_processing, sd3_arrays, sd3_vae_tiling, sd3_tokenizers
                      the runtime's torch-free parts: torch's CPU randn, diffusers' flow-match scheduler and image
                      processor in numpy, numpy-or-torch arguments, tiled VAE, tokenizers without transformers
    sd3_submodels     OpenVINO submodels of a folder, devices, the folder's tokenizers and scheduler
    sd3_lora          LoRA adapters: read as diffusers reads them, switched at run time through OpenVINO states
    sd3_previews      live previews of the latents: a linear map fitted from the VAE, or a tiny decoder (TAESD)
    sd3_runtime       OVStableDiffusion3Pipeline: the denoising steps as short methods
    sd3_image_pipelines  image-to-image and inpainting on the runtime's steps
    sd3_genai         the same folder in openvino.genai's pipelines
    sd3_conversion    checkpoint -> OpenVINO IR (torch.export + NNCF weight compression)
    sd3_quantization  int8-hybrid: calibration and quantization (uses the runtime and conversion)
    sd3_tiny_model    a tiny random-weight SD3 checkpoint built offline (uses the layout)
    sd3_helper        this facade and the command line

Command line: `python sd3_helper.py {tiny-model,convert,generate} --help`.
"""

import argparse
import os
import sys
from pathlib import Path

from sd3_conversion import convert_preview_decoder, convert_to_openvino, load_sd3_pipeline
from sd3_layout import (
    GENERATION_DEFAULTS,
    HYBRID_WEIGHT_FORMAT,
    WEIGHT_FORMATS,
    GenerationDefaults,
    SizeRules,
    folder_size,
    linear_node_name,
    staged_dir,
)
from sd3_image_pipelines import OVStableDiffusion3Img2ImgPipeline, OVStableDiffusion3InpaintPipeline
from sd3_presets import MODEL_PRESETS, ModelPreset, get_preset, preset_for, presets_table
from sd3_quantization import convert_sd3_hybrid, psnr, quantize_sd3
from sd3_genai import genai_adapter_config, make_genai_pipeline
from sd3_lora import check_lora
from sd3_previews import LatentRGBMap
from sd3_runtime import OVStableDiffusion3Pipeline, SD3PipelineOutput
from sd3_steps import SkipLayerGuidance, TaylorSeerConfig
from sd3_submodels import OVSubmodel
from sd3_tiny_model import make_tiny_lora, make_tiny_sd3, make_tiny_taesd, train_clip_tokenizer

__all__ = [
    "make_tiny_sd3",
    "make_tiny_lora",
    "load_sd3_pipeline",
    "convert_sd3",
    "quantize_sd3",
    "OVStableDiffusion3Pipeline",
    "OVStableDiffusion3Img2ImgPipeline",
    "OVStableDiffusion3InpaintPipeline",
    "OVSubmodel",
    "SD3PipelineOutput",
    "TaylorSeerConfig",
    "SkipLayerGuidance",
    "make_genai_pipeline",
    "genai_adapter_config",
    "WEIGHT_FORMATS",
    "MODEL_PRESETS",
    "ModelPreset",
    "get_preset",
    "preset_for",
    "presets_table",
    "GENERATION_DEFAULTS",
    "GenerationDefaults",
    "SizeRules",
    "folder_size",
    "psnr",
    "staged_dir",
    "train_clip_tokenizer",
    "linear_node_name",
    "load_adapters",
    "convert_preview_decoder",
    "make_tiny_taesd",
    "LatentRGBMap",
]


def convert_sd3(
    checkpoint: str | Path,
    output_dir: str | Path,
    *,
    load_t5: bool = True,
    weight_format: str = "fp16",
    quantize_vae: bool = False,
    lora: list[tuple[str | Path, float]] | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert an SD3 checkpoint to OpenVINO IR in the optimum-intel / openvino.genai layout; return `output_dir`.

    `checkpoint` is a hub id or a local diffusers folder. `weight_format` is `fp32`, `fp16`, `int8` (NNCF 8-bit
    weights in every submodel), `int4` (4-bit transformer and T5, see `sd3_conversion.INT4_SETTINGS`) or
    `int8-hybrid` (the transformer's activations and weights in int8, calibrated by `quantize_sd3` with its
    defaults, the other submodels int8 weights; for its options call `quantize_sd3` on an fp16 folder).
    Without `load_t5`, T5-XXL is neither loaded nor converted, and the pipeline runs without it.
    `quantize_vae=True` (int8-hybrid only) quantizes the VAE decoder's and encoder's activations too (see
    `sd3_quantization.quantize_vae_model`): a faster decode, at a quality measured in README.
    `lora` (`[(lora_path_or_hub_id, scale), ...]`) fuses LoRA adapters at their scales into the transformer and
    the CLIP text encoders before conversion (the original tutorial's "Flash SD3" recipe); the folder's
    `openvino_conversion.json` records them.

    Submodels are loaded in 16 bits (f32 for `fp32`), converted one at a time and freed before the next.
    Finished submodels are skipped unless `overwrite=True`; `model_index.json` is written last, so a folder
    that has it is complete.
    """
    if weight_format == HYBRID_WEIGHT_FORMAT:
        return convert_sd3_hybrid(checkpoint, output_dir, load_t5=load_t5, quantize_vae=quantize_vae, lora=lora, overwrite=overwrite)
    if quantize_vae:
        raise ValueError(
            f"`quantize_vae=True` needs `weight_format='{HYBRID_WEIGHT_FORMAT}'` (the VAE is calibrated with the "
            f"transformer) but `weight_format` is {weight_format!r}. Pass weight_format='{HYBRID_WEIGHT_FORMAT}', or leave `quantize_vae` off."
        )
    return convert_to_openvino(checkpoint, output_dir, load_t5=load_t5, weight_format=weight_format, lora=lora, overwrite=overwrite)


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


def lora_argument(text: str) -> tuple[str, float]:
    """`PATH[:SCALE]` from the command line as `(path, scale)`; the scale defaults to 1.0."""
    path, separator, scale = text.rpartition(":")
    if not separator or not path:
        return text, 1.0
    try:
        return path, float(scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lora {text!r}: SCALE after the last ':' has to be a number, e.g. my_lora.safetensors:0.8") from None


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sd3_helper.py", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    tiny = commands.add_parser("tiny-model", help="write a tiny random-weight SD3 checkpoint (offline)")
    tiny.add_argument("output_dir", type=Path)
    tiny.add_argument("--seed", type=int, default=0)

    convert = commands.add_parser("convert", help="convert an SD3 checkpoint to OpenVINO IR")
    convert.add_argument("checkpoint", help="hub id (e.g. stabilityai/stable-diffusion-3-medium-diffusers) or local folder")
    convert.add_argument("output_dir", type=Path)
    convert.add_argument("--weight-format", choices=WEIGHT_FORMATS, default="fp16")
    convert.add_argument("--no-t5", action="store_true", help="skip the T5-XXL text encoder (saves ~9.5 GB of RAM)")
    convert.add_argument("--overwrite", action="store_true", help="convert again even if already converted")
    convert.add_argument("--quantize-vae", action="store_true", help="with --weight-format int8-hybrid: the VAE in int8 too (faster decode)")
    convert.add_argument(
        "--lora", action="append", type=lora_argument, default=[], metavar="PATH[:SCALE]", help="fuse a LoRA at SCALE (default 1.0); repeatable"
    )
    convert.add_argument(
        "--preview-decoder", default=None, metavar="TINY_AUTOENCODER",
        help="also convert a tiny autoencoder's decoder for live previews (hub id or folder, e.g. madebyollin/taesd3)",
    )

    generate = commands.add_parser("generate", help="generate an image with a converted model")
    generate.add_argument("model_dir", type=Path)
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--negative-prompt", default=None)
    generate.add_argument("--output", type=Path, default=Path("image.png"))
    generate.add_argument("--steps", type=int, default=GENERATION_DEFAULTS.num_inference_steps)
    generate.add_argument("--guidance", type=float, default=GENERATION_DEFAULTS.guidance_scale)
    generate.add_argument("--seed", type=int, default=42)
    generate.add_argument("--height", type=int, default=None, help="default: the model's native size")
    generate.add_argument("--width", type=int, default=None)
    generate.add_argument("--device", default="CPU")
    generate.add_argument("--image", type=Path, default=None, help="start from this image (image-to-image, or inpainting with --mask)")
    generate.add_argument("--mask", type=Path, default=None, help="repaint where this mask is white (needs --image)")
    generate.add_argument("--strength", type=float, default=None, help="with --image: how much to change it, 0-1 (default 0.6)")
    generate.add_argument(
        "--step-cache", action="store_true", help="TaylorSeer step caching, openvino.genai's default: faster, a slightly different image"
    )
    generate.add_argument(
        "--lora", action="append", type=lora_argument, default=[], metavar="PATH[:SCALE]",
        help="apply a LoRA at SCALE (default 1.0) at run time, without converting again; repeatable",
    )
    return parser.parse_args(argv)


USER_ERRORS = (ValueError, TypeError, FileNotFoundError, PermissionError, FileExistsError, NotADirectoryError, IsADirectoryError)


def check_image_path(path: Path) -> None:
    """Raise a named error now if an image cannot be saved at `path` (unknown extension, a folder, a parent that
    is a file, no write permission), so that no finished image is thrown away later. Creates missing parents."""
    from PIL import Image

    Image.init()
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format not in Image.SAVE:
        raise ValueError(f"`--output` {str(path)!r} needs an image extension Pillow can write, such as .png, .jpg or .webp.")
    if path.is_dir():
        raise IsADirectoryError(f"`--output` {str(path)!r} is a folder; name the image file, e.g. {str(path / 'image.png')!r}.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:
        raise FileExistsError(f"`--output` {str(path)!r} cannot be written: a part of its folder is a file ({error.filename}).") from error
    if not os.access(path.parent, os.W_OK):
        raise PermissionError(f"`--output` {str(path)!r} cannot be written: no write permission in {str(path.parent)!r}.")


def _read_image(path: Path, *, flag: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB") if flag == "--image" else image.convert("L")
    except FileNotFoundError as error:
        raise FileNotFoundError(f"`{flag}` {str(path)!r} does not exist.") from error
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"`{flag}` {str(path)!r} is not an image Pillow can read ({error}).") from error


def _image_arguments(args: argparse.Namespace) -> dict:
    """The image-to-image / inpainting arguments of `generate`, read and checked before any model loads."""
    if args.image is None:
        if args.mask is not None or args.strength is not None:
            raise ValueError("`--mask` and `--strength` need `--image`: the picture to change.")
        return {}
    arguments = {"image": _read_image(args.image, flag="--image")}
    if args.mask is not None:
        arguments["mask_image"] = _read_image(args.mask, flag="--mask")
    if args.strength is not None:
        arguments["strength"] = args.strength
    return arguments


def load_adapters(pipe: OVStableDiffusion3Pipeline, lora: list[tuple[str, float]]) -> None:
    """Load each `(path, scale)` of `lora` into `pipe` (adapters `lora_0`, `lora_1`, ...) and make them all active at
    their scales."""
    names = [f"lora_{index}" for index in range(len(lora))]
    for name, (source, _) in zip(names, lora):
        pipe.load_lora_weights(source, adapter_name=name)
    if names:
        pipe.set_adapters(names, [scale for _, scale in lora])


def _generate(args: argparse.Namespace) -> Path:
    check_image_path(args.output)
    image_arguments = _image_arguments(args)
    lora = check_lora(args.lora)
    pipe_class = OVStableDiffusion3InpaintPipeline if args.mask else OVStableDiffusion3Img2ImgPipeline if args.image else OVStableDiffusion3Pipeline
    pipe = pipe_class.from_pretrained(args.model_dir, device=args.device)
    load_adapters(pipe, lora)
    image = pipe(
        args.prompt,
        **image_arguments,
        negative_prompt=args.negative_prompt,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        height=args.height,
        width=args.width,
        generator=args.seed,  # torch.Generator().manual_seed(seed)'s noise, without importing torch
        taylorseer=TaylorSeerConfig() if args.step_cache else None,
    ).images[0]
    image.save(args.output)
    return args.output


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python sd3_helper.py`; returns the exit status."""
    args = _parse_args(argv)
    try:
        if args.command == "tiny-model":
            print(make_tiny_sd3(args.output_dir, seed=args.seed))
        elif args.command == "convert":
            options = dict(load_t5=not args.no_t5, weight_format=args.weight_format, quantize_vae=args.quantize_vae, lora=args.lora)
            options["overwrite"] = args.overwrite
            print(convert_sd3(args.checkpoint, args.output_dir, **options))
            if args.preview_decoder:
                print(convert_preview_decoder(args.preview_decoder, args.output_dir, overwrite=args.overwrite))
        else:
            print(_generate(args))
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
