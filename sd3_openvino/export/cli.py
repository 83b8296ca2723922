"""The command line of `python sd3_helper.py {tiny-model,convert,generate,tiny-controlnet,convert-controlnet,tiny-ip-adapter}`:
argument parsing, the image, LoRA and IP-Adapter arguments checked before any model loads, and one error line (exit status 2) for a user's mistake. `generate` runs
without torch (0.5 GB of RSS): the exporters, which need it, are imported by their commands."""

import argparse
import math
import os
import sys
from pathlib import Path

from ..core.layout import GENERATION_DEFAULTS, WEIGHT_FORMATS
from ..runtime.control_images import CONTROL_PREPROCESSORS, control_image_for
from ..runtime.controlnet_pipelines import OVStableDiffusion3ControlNetInpaintingPipeline, OVStableDiffusion3ControlNetPipeline
from ..runtime.image_pipelines import OVStableDiffusion3Img2ImgPipeline, OVStableDiffusion3InpaintPipeline
from ..runtime.ip_adapter import DEFAULT_IP_ADAPTER_SCALE
from ..runtime.lora import check_lora, load_adapters, lora_argument
from ..runtime.pipeline import OVStableDiffusion3Pipeline
from ..runtime.shapes import SHAPES_POLICIES
from ..runtime.steps import DEFAULT_STEP_CACHE

DESCRIPTION = "Stable Diffusion 3 with OpenVINO: convert a checkpoint, run it with a small OpenVINO pipeline."


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sd3_helper.py", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)

    tiny = commands.add_parser("tiny-model", help="write a tiny random-weight SD3 checkpoint (offline)")
    tiny.add_argument("output_dir", type=Path)
    tiny.add_argument("--seed", type=int, default=0)

    convert = commands.add_parser("convert", help="convert an SD3 checkpoint to OpenVINO IR")
    convert.add_argument(
        "checkpoint",
        help="hub id (e.g. stabilityai/stable-diffusion-3-medium-diffusers), local folder, or single file (.safetensors, GGUF transformer .gguf)",
    )
    convert.add_argument("output_dir", type=Path)
    convert.add_argument(
        "--config", default=None, help="single files: the base (diffusers folder or hub id) for tokenizers, scheduler, configs and missing parts"
    )
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
        "--step-cache", action=argparse.BooleanOptionalAction, default=True,
        help="TaylorSeer step caching (default on, as in openvino.genai): fewer transformer calls, a slightly "
        "different image; --no-step-cache gives diffusers' exact image",
    )
    generate.add_argument(
        "--shapes", choices=SHAPES_POLICIES, default="auto",
        help="auto (default): compile the transformer and VAE decoder for the image size; dynamic: any size, more memory; "
        "static: the native size only",
    )
    generate.add_argument(
        "--cache-dir", type=Path, default=None, help="keep compiled models here (weightless on CPU): later runs start faster"
    )
    generate.add_argument(
        "--lora", action="append", type=lora_argument, default=[], metavar="PATH[:SCALE]",
        help="apply a LoRA at SCALE (default 1.0) at run time, without converting again; repeatable",
    )
    _add_control_arguments(generate)
    _add_ip_adapter_arguments(generate)
    _add_controlnet_commands(commands)
    _add_ip_adapter_commands(commands)
    args = parser.parse_args(argv)
    if args.command == "generate":
        _check_ip_adapter_flags(args, parser=generate)
    return args


def _add_controlnet_commands(commands) -> None:
    """`tiny-controlnet` and `convert-controlnet`."""
    tiny_controlnet = commands.add_parser("tiny-controlnet", help="write a tiny random-weight ControlNet for a tiny checkpoint (offline)")
    tiny_controlnet.add_argument("checkpoint", type=Path, help="the tiny SD3 checkpoint (from `tiny-model`)")
    tiny_controlnet.add_argument("output_dir", type=Path)
    tiny_controlnet.add_argument("--family", choices=("instantx", "sd3.5"), default="instantx")
    tiny_controlnet.add_argument("--inpainting", action="store_true", help="an inpainting ControlNet (reads the mask)")
    tiny_controlnet.add_argument("--seed", type=int, default=0)

    convert_controlnet = commands.add_parser("convert-controlnet", help="convert an SD3 / SD3.5 ControlNet to OpenVINO IR")
    convert_controlnet.add_argument("checkpoint", help="hub id (e.g. InstantX/SD3-Controlnet-Canny) or local folder")
    convert_controlnet.add_argument("output_dir", type=Path)
    convert_controlnet.add_argument("--weight-format", choices=("fp32", "fp16", "int8", "int4"), default="fp16")
    convert_controlnet.add_argument(
        "--base-model", default=None, help="SD3.5 ControlNets only: the SD3 checkpoint they are used with (its patch embedding is read)"
    )
    convert_controlnet.add_argument("--overwrite", action="store_true", help="convert again even if already converted")


def _add_control_arguments(generate) -> None:
    """`generate`'s ControlNet flags."""
    generate.add_argument(
        "--controlnet", action="append", type=Path, default=[], metavar="DIR",
        help="guide the image with this converted ControlNet (from `convert-controlnet`); repeatable (multi-ControlNet)",
    )
    generate.add_argument(
        "--control-image", action="append", type=Path, default=[], metavar="PATH", help="the control image, one per --controlnet"
    )
    generate.add_argument(
        "--control-preprocessor", choices=CONTROL_PREPROCESSORS, default="none",
        help="make the control image from --control-image: canny edges, blur (tile/blur ControlNets), depth (a grey depth map); none: as it is",
    )
    generate.add_argument(
        "--control-scale", action="append", type=float, default=[], metavar="S", help="ControlNet strength (default 1.0), one or one per --controlnet"
    )
    generate.add_argument("--control-start", type=float, default=0.0, help="fraction of the steps where the ControlNets start acting")
    generate.add_argument("--control-end", type=float, default=1.0, help="fraction of the steps where they stop")


def _finite_float(text: str) -> float:
    """A finite float; argparse reports anything else (`nan`, `inf`, `abc`) with this message and exits 2."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"has to be a number but is {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"has to be a finite number but is {text!r}")
    return value


def _add_ip_adapter_arguments(generate) -> None:
    """`generate`'s IP-Adapter flags: an image prompt."""
    generate.add_argument(
        "--ip-adapter", type=Path, default=None, metavar="PATH",
        help="prompt with an image through this IP-Adapter: a folder converted by `convert_sd3_ip_adapter`, or its source "
        "folder (`ip-adapter.safetensors` and `image_encoder/`, e.g. from `tiny-ip-adapter`), converted into MODEL_DIR once",
    )
    generate.add_argument("--ip-image", type=Path, default=None, metavar="PATH", help="the image prompt (needs --ip-adapter)")
    generate.add_argument(
        "--ip-scale", type=_finite_float, default=None, metavar="S",
        help=f"how strongly the image prompt conditions the image: 0 ignores it, 1 is the adapter's full weight "
        f"(default {DEFAULT_IP_ADAPTER_SCALE}, as diffusers)",
    )


def _check_ip_adapter_flags(args: argparse.Namespace, *, parser: argparse.ArgumentParser) -> None:
    """`--ip-adapter` and `--ip-image` come together (`--ip-scale` needs them); argparse reports a lone one and exits 2."""
    if args.ip_adapter is None and (args.ip_image is not None or args.ip_scale is not None):
        given = "--ip-image" if args.ip_image is not None else "--ip-scale"
        parser.error(f"`{given}` needs `--ip-adapter PATH`: the IP-Adapter that reads the image prompt (e.g. a folder from `tiny-ip-adapter`).")
    if args.ip_adapter is not None and args.ip_image is None:
        parser.error("`--ip-adapter` needs `--ip-image PATH`: the image to prompt with. Without an image prompt, leave `--ip-adapter` out.")


def _add_ip_adapter_commands(commands) -> None:
    """`tiny-ip-adapter`."""
    tiny_ip_adapter = commands.add_parser(
        "tiny-ip-adapter", help="write a tiny random-weight IP-Adapter for a tiny checkpoint (offline; families sd3 and sd3.5-large)"
    )
    tiny_ip_adapter.add_argument("checkpoint", type=Path, help="the tiny SD3 checkpoint (from `tiny-model`)")
    tiny_ip_adapter.add_argument("output_dir", type=Path)
    tiny_ip_adapter.add_argument("--seed", type=int, default=0)


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


def _read_image(path: Path, *, flag: str, mode: str = "RGB"):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert(mode)
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
        arguments["mask_image"] = _read_image(args.mask, flag="--mask", mode="L")
    if args.strength is not None:
        arguments["strength"] = args.strength
    return arguments


def _control_arguments(args: argparse.Namespace, image_arguments: dict) -> dict:
    """The ControlNet arguments of `generate`, read and checked before any model loads. With `--mask`, the ControlNet
    is an inpainting one: `--image` and `--mask` become its control image and mask."""
    if not args.controlnet:
        if args.control_image or args.control_scale:
            raise ValueError("`--control-image` and `--control-scale` need `--controlnet`: a folder written by `convert-controlnet`.")
        return {}
    if args.mask is not None:
        return {"control_image": image_arguments.pop("image"), "control_mask": image_arguments.pop("mask_image")}
    if image_arguments:
        raise ValueError("`--image` with `--controlnet` needs `--mask` (ControlNet inpainting); for a control image use `--control-image`.")
    if len(args.control_image) != len(args.controlnet):
        raise ValueError(f"Pass one `--control-image` per `--controlnet`: got {len(args.control_image)} for {len(args.controlnet)}.")
    images = [control_image_for(_read_image(path, flag="--control-image"), preprocessor=args.control_preprocessor) for path in args.control_image]
    arguments = {"control_image": images if len(images) > 1 else images[0]}
    if args.control_scale:
        arguments["controlnet_conditioning_scale"] = args.control_scale if len(args.control_scale) > 1 else args.control_scale[0]
    arguments["control_guidance_start"], arguments["control_guidance_end"] = args.control_start, args.control_end
    return arguments


def _ip_adapter_arguments(args: argparse.Namespace) -> dict:
    """The image prompt of `generate` (`ip_adapter_image`), read and checked before any model loads; {} without one."""
    if args.ip_adapter is None:
        return {}
    if not args.ip_adapter.exists():
        raise FileNotFoundError(
            f"`--ip-adapter` {str(args.ip_adapter)!r} does not exist. Pass a folder converted by `convert_sd3_ip_adapter`, or "
            "the adapter's source folder (`ip-adapter.safetensors` and `image_encoder/`)."
        )
    return {"ip_adapter_image": _read_image(args.ip_image, flag="--ip-image")}


def _load_ip_adapter(pipe, args: argparse.Namespace) -> None:
    """Load `--ip-adapter` (converting a source folder into the model folder once) at `--ip-scale`."""
    if args.ip_adapter is None:
        return
    try:
        pipe.load_ip_adapter(args.ip_adapter)
    except USER_ERRORS as error:  # a folder that is no IP-Adapter, one for another transformer
        raise type(error)(f"`--ip-adapter` {str(args.ip_adapter)!r}: {error}") from error
    pipe.set_ip_adapter_scale(DEFAULT_IP_ADAPTER_SCALE if args.ip_scale is None else args.ip_scale)


def _pipeline_class(args: argparse.Namespace):
    if args.controlnet:
        return OVStableDiffusion3ControlNetInpaintingPipeline if args.mask else OVStableDiffusion3ControlNetPipeline
    return OVStableDiffusion3InpaintPipeline if args.mask else OVStableDiffusion3Img2ImgPipeline if args.image else OVStableDiffusion3Pipeline


def _generate(args: argparse.Namespace) -> Path:
    check_image_path(args.output)
    image_arguments = _image_arguments(args)
    image_arguments.update(_control_arguments(args, image_arguments))
    image_arguments.update(_ip_adapter_arguments(args))
    lora = check_lora(args.lora, argument="`--lora`")  # a missing file or a bad scale fails before the model loads
    options = dict(device=args.device, shapes=args.shapes, cache_dir=args.cache_dir)
    if args.controlnet:
        options["controlnet"] = args.controlnet if len(args.controlnet) > 1 else args.controlnet[0]
    pipe = _pipeline_class(args).from_pretrained(args.model_dir, **options)
    load_adapters(pipe, lora)
    _load_ip_adapter(pipe, args)
    image = pipe(
        args.prompt,
        **image_arguments,
        negative_prompt=args.negative_prompt,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        height=args.height,
        width=args.width,
        generator=args.seed,  # torch.Generator().manual_seed(seed)'s noise, without importing torch
        taylorseer=DEFAULT_STEP_CACHE if args.step_cache else None,
    ).images[0]
    image.save(args.output)
    return args.output


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python sd3_helper.py`; returns the exit status."""
    args = _parse_args(argv)
    try:
        if args.command == "tiny-model":
            from .tiny_model import make_tiny_sd3

            print(make_tiny_sd3(args.output_dir, seed=args.seed))
        elif args.command == "convert":
            from .convert import convert_sd3
            from .preview_decoder import convert_preview_decoder

            lora = check_lora(args.lora, argument="`--lora`")  # before the checkpoint is read
            options = dict(load_t5=not args.no_t5, weight_format=args.weight_format, quantize_vae=args.quantize_vae, lora=lora)
            options |= {"overwrite": args.overwrite, "config": args.config}
            print(convert_sd3(args.checkpoint, args.output_dir, **options))
            if args.preview_decoder:
                print(convert_preview_decoder(args.preview_decoder, args.output_dir, overwrite=args.overwrite))
        elif args.command == "tiny-controlnet":
            from .tiny_model import make_tiny_sd3_controlnet

            print(make_tiny_sd3_controlnet(args.checkpoint, args.output_dir, family=args.family, inpainting=args.inpainting, seed=args.seed))
        elif args.command == "convert-controlnet":
            from .controlnet import convert_sd3_controlnet

            print(convert_sd3_controlnet(args.checkpoint, args.output_dir, weight_format=args.weight_format, base_model=args.base_model, overwrite=args.overwrite))
        elif args.command == "tiny-ip-adapter":
            if not (args.checkpoint / "transformer" / "config.json").is_file():  # before torch and diffusers load
                raise FileNotFoundError(
                    f"`checkpoint` '{args.checkpoint}' holds no `transformer/config.json`. Pass a tiny SD3 checkpoint: "
                    f"`python sd3_helper.py tiny-model {args.checkpoint}` writes one."
                )
            from .tiny_model import make_tiny_ip_adapter

            print(make_tiny_ip_adapter(args.checkpoint, args.output_dir, seed=args.seed))
        else:
            print(_generate(args))
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
