"""Loading an SD3 checkpoint in diffusers format (a hub id or a local folder), and fusing LoRAs into its modules."""

import importlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from ..core.layout import check_local_checkpoint, check_sd3_index, is_hub_id
from ..runtime.lora import read_lora_state_dict
from .single_file import SingleFileCheckpoint


def _model_not_found(checkpoint: str | Path, error: Exception) -> FileNotFoundError:
    """The error for a checkpoint that cannot be read: hub advice (license, login) for a hub id only."""
    if not is_hub_id(checkpoint):
        return FileNotFoundError(
            f"Could not load the SD3 checkpoint in the local folder `{checkpoint}` ({type(error).__name__}: {error}). "
            "Check that it is a complete checkpoint in diffusers format (each component's folder with its config and "
            "weights), or copy it again."
        )
    return FileNotFoundError(
        f"Could not load the SD3 checkpoint `{checkpoint}` ({type(error).__name__}: {error}). "
        "Pass either a local folder in diffusers format (it contains `model_index.json`) or a Hugging Face hub "
        "id such as `stabilityai/stable-diffusion-3-medium-diffusers`. The official SD3 checkpoints are gated: "
        "accept the license on the model page, then log in with `huggingface-cli login` (or "
        "`huggingface_hub.login()`) on a machine that can reach huggingface.co."
    )


def load_model_index_and_revision(checkpoint: str | Path | SingleFileCheckpoint, *, load_t5: bool = True) -> tuple[dict, str | None]:
    """`load_model_index`, and the hub revision (commit) it was read from (None for a local folder). A local folder
    is checked first (`check_local_checkpoint`: each component the conversion reads, T5 only with `load_t5`), without
    importing diffusers. A single file answers with its base's (see `SingleFileCheckpoint`)."""
    if isinstance(checkpoint, SingleFileCheckpoint):  # the base's index; T5 from the base only if the file has none
        t5_from_base = load_t5 and "text_encoder_3" not in checkpoint.components
        try:
            model_index, revision = load_model_index_and_revision(checkpoint.config, load_t5=t5_from_base)
        except FileNotFoundError as error:
            raise checkpoint.base_error(error) from error
        checkpoint.check_base_index(model_index)
        return model_index, revision
    check_local_checkpoint(checkpoint, load_t5=load_t5)
    from diffusers import DiffusionPipeline

    try:
        config, revision = DiffusionPipeline.load_config(str(checkpoint), return_commit_hash=True)
    except Exception as error:  # hub, network and file errors all mean the same thing to the user
        raise _model_not_found(checkpoint, error) from error
    model_index = dict(config)
    check_sd3_index(model_index, where=f"`{checkpoint}`")
    return model_index, revision


def load_model_index(checkpoint: str | Path, *, load_t5: bool = True) -> dict:
    """Read `model_index.json` of an SD3 checkpoint (local folder or hub id), with a clear error if it is absent,
    describes another kind of pipeline, or (a local folder) lacks a component (T5 only with `load_t5`)."""
    return load_model_index_and_revision(checkpoint, load_t5=load_t5)[0]


def transformer_layers(checkpoint: str | Path | SingleFileCheckpoint) -> int:
    """The number of blocks of the checkpoint's transformer (`num_layers` of its config; a single file's base)."""
    from diffusers import SD3Transformer2DModel

    base = checkpoint.config if isinstance(checkpoint, SingleFileCheckpoint) else str(checkpoint)
    try:
        return SD3Transformer2DModel.load_config(base, subfolder="transformer")["num_layers"]
    except OSError as error:
        raise _model_not_found(base, error) from error


def fuse_loras(module: torch.nn.Module, *, component: str, lora: list[tuple[str, float]], transformer_layers: int) -> None:
    """Fuse each `(source, scale)` LoRA of `lora` that has weights for `component` into `module`'s weights, as
    diffusers' `load_lora_weights` + `set_adapters` + `fuse_lora` do, and remove the LoRA layers again.
    `transformer_layers` (the transformer's block count) places Kohya / ComfyUI LoRAs (see `lora_formats.py`)."""
    from diffusers import StableDiffusion3Pipeline
    from diffusers.utils.peft_utils import recurse_remove_peft_layers
    from peft.tuners.tuners_utils import BaseTunerLayer

    names = []
    for index, (source, scale) in enumerate(lora):
        state_dict, metadata = read_lora_state_dict(source, transformer_layers=transformer_layers)
        if not any(key.startswith(f"{component}.") for key in state_dict):
            continue
        name = f"lora_{index}"
        if component == "transformer":
            StableDiffusion3Pipeline.load_lora_into_transformer(state_dict, transformer=module, adapter_name=name, metadata=metadata)
        else:
            StableDiffusion3Pipeline.load_lora_into_text_encoder(
                state_dict, network_alphas=None, text_encoder=module, prefix=component, adapter_name=name, metadata=metadata
            )
        for layer in module.modules():
            if isinstance(layer, BaseTunerLayer) and name in layer.scaling:
                layer.scaling[name] *= scale  # diffusers' adapter weight
        names.append(name)
    if names:
        for layer in module.modules():
            if isinstance(layer, BaseTunerLayer):
                layer.merge(adapter_names=[name for name in names if name in layer.scaling])
        recurse_remove_peft_layers(module)


def load_sd3_pipeline(checkpoint: str | Path, *, load_t5: bool = True, torch_dtype: torch.dtype | None = None):
    """Load the PyTorch `diffusers.StableDiffusion3Pipeline` from a hub id or a local folder.

    With `load_t5=False` the T5-XXL encoder (4.7B parameters, the largest submodel) and its tokenizer are not
    loaded; the pipeline then uses zeros in place of the T5 embeddings, as diffusers does.
    """
    from diffusers import StableDiffusion3Pipeline

    load_model_index(checkpoint, load_t5=load_t5)  # fails early, with the helpful message, if the model is unreachable
    t5_kwargs = {} if load_t5 else {"text_encoder_3": None, "tokenizer_3": None}
    try:
        return StableDiffusion3Pipeline.from_pretrained(str(checkpoint), torch_dtype=torch_dtype, **t5_kwargs)
    except OSError as error:
        raise _model_not_found(checkpoint, error) from error


def load_component(checkpoint: str | Path | SingleFileCheckpoint, *, model_index: dict, name: str, **kwargs):
    """Load one component (`transformer`, `vae`, `tokenizer_2`, ...) by the class `model_index.json` names (of a
    single file: from the file when it holds it, else from its base)."""
    if isinstance(checkpoint, SingleFileCheckpoint):
        if name in checkpoint.components:
            return checkpoint.load_from_file(name, model_index=model_index, **kwargs)
        checkpoint = checkpoint.config
    library_name, class_name = model_index[name]
    component_class = getattr(importlib.import_module(library_name), class_name)
    try:
        return component_class.from_pretrained(str(checkpoint), subfolder=name, **kwargs)
    except OSError as error:
        raise _model_not_found(checkpoint, error) from error


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide transformers' and diffusers' per-file bars ("Loading weights", "Writing model shards") in the block,
    so a conversion shows one bar over its submodels."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    enabled = [(library, library.is_progress_bar_enabled()) for library in (transformers_logging, diffusers_logging)]
    for library, _ in enabled:
        library.disable_progress_bar()
    try:
        yield
    finally:
        for library, was_enabled in enabled:
            if was_enabled:
                library.enable_progress_bar()
