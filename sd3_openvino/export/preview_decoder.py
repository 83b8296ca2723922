"""The tiny autoencoder's decoder (TAESD), converted into an SD3 folder for live previews (see `runtime/previews.py`)."""

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from ..core.files import staged_dir
from ..core.layout import CONFIG_JSON, check_sd3_index, is_converted, read_json, read_model_index, recorded_weight_format
from ..runtime.previews import PREVIEW_DECODER, check_tiny_autoencoder
from .conversion import export_ir, save_ir
from .modules import vae_decoder_spec

PREVIEW_WEIGHT_FORMATS = ("fp32", "fp16")  # the tiny decoder is a few MB: compressing it further gains nothing


@contextmanager
def diffusers_errors_only() -> Iterator[None]:
    """diffusers' log at ERROR level in the block (`AutoencoderTiny` warns of the `block_out_channels` its own config holds)."""
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(verbosity)


def _tiny_autoencoder_not_found(source: str | Path, error: Exception) -> FileNotFoundError:
    return FileNotFoundError(
        f"Could not load the tiny autoencoder `{source}` ({type(error).__name__}: {str(error).strip().splitlines()[0][:300]}). "
        "Pass a local folder with its `config.json` and weights, or a Hugging Face hub id such as 'madebyollin/taesd3' on "
        "a machine that can reach huggingface.co (elsewhere: `huggingface-cli download madebyollin/taesd3 --local-dir taesd3` "
        "there, then pass the folder)."
    )


def _load_tiny_autoencoder(source: str | Path, *, vae_config: dict):
    """diffusers' `AutoencoderTiny` from a hub id or a local folder, in f32, once its config is found to fit the VAE of
    `vae_config` (`check_tiny_autoencoder`: before any weights are read); a FileNotFoundError naming `source` if absent."""
    from diffusers import AutoencoderTiny

    try:
        with diffusers_errors_only():
            config = AutoencoderTiny.load_config(str(source))
    except (OSError, ValueError) as error:  # ValueError: huggingface_hub's, for a path that is no folder and no hub id
        raise _tiny_autoencoder_not_found(source, error) from error
    check_tiny_autoencoder(dict(config), vae_config=vae_config, where=f"`{source}`")
    try:
        with diffusers_errors_only():
            return AutoencoderTiny.from_pretrained(str(source), torch_dtype=torch.float32).eval()
    except OSError as error:  # a config without weights
        raise _tiny_autoencoder_not_found(source, error) from error


def convert_preview_decoder(
    tiny_autoencoder: str | Path, model_dir: str | Path, *, weight_format: str | None = None, overwrite: bool = False
) -> Path:
    """Convert the decoder of a tiny autoencoder (TAESD: diffusers' `AutoencoderTiny`, e.g. 'madebyollin/taesd3') into
    the converted SD3 folder `model_dir`, for `pipe.preview_images(latents, method="taesd")`; return its folder.

    It goes to `model_dir / "vae_preview_decoder"` (an IR taking `latent_sample`, giving `sample` in [-1, 1], and the
    autoencoder's `config.json`), written atomically. `model_index.json` does not list it, so optimum-intel and
    openvino.genai load the folder as before. `weight_format` is "fp32" or "fp16" (default: fp32 for an fp32 folder,
    else fp16). The autoencoder has to fit the folder's VAE (latent channels and scale). A folder that already holds
    this autoencoder's decoder is kept unless `overwrite=True`; one that holds another's is refused.
    """
    model_dir = Path(model_dir)
    check_sd3_index(read_model_index(model_dir), where=f"`{model_dir}`")
    vae_config = read_json(model_dir / "vae_decoder" / CONFIG_JSON, model_dir=model_dir)
    if weight_format is None:
        weight_format = "fp32" if recorded_weight_format(model_dir / "vae_decoder") == "fp32" else "fp16"
    if weight_format not in PREVIEW_WEIGHT_FORMATS:
        raise ValueError(f"`weight_format` of the preview decoder must be one of {list(PREVIEW_WEIGHT_FORMATS)} but is {weight_format!r}.")
    folder = model_dir / PREVIEW_DECODER
    if is_converted(folder) and not overwrite:
        converted_from = read_json(folder / CONFIG_JSON, model_dir=model_dir).get("_name_or_path")
        if converted_from == str(tiny_autoencoder) and recorded_weight_format(folder) == weight_format:
            return folder  # already converted
        raise ValueError(
            f"`{folder}` holds the decoder of {converted_from!r} in {recorded_weight_format(folder)}, not of "
            f"{str(tiny_autoencoder)!r} in {weight_format}. Pass `overwrite=True` to replace it."
        )
    tiny = _load_tiny_autoencoder(tiny_autoencoder, vae_config=vae_config)
    ov_model = export_ir(vae_decoder_spec(tiny), submodel=PREVIEW_DECODER, weight_format=weight_format)
    with staged_dir(folder) as staging:
        save_ir(ov_model, staging, config_source=tiny, weight_format=weight_format)
    return folder
