"""Single-file SD3 / SD3.5 checkpoints as a conversion source: the Stability / ComfyUI `.safetensors` layout (with or
without the text encoders in it) and GGUF transformers, read as diffusers' `from_single_file` reads them.

A single file holds weights only: the tokenizers, the scheduler, the configs and any part the file lacks (often the
VAE or the text encoders) come from a base checkpoint in diffusers format, `config` (a local folder or a hub id of
the same family, as diffusers' `config=`). `SingleFileCheckpoint` stands in for a checkpoint folder in the
conversion: `load_component` and `load_model_index_and_revision` (loading.py) ask it, and each part is read from
the file alone (only its own tensors: a 16 GB file is never read whole).

GGUF files (ComfyUI-GGUF's SD3 transformers, original key names) are dequantized to float when read, which is what
diffusers' GGUF support computes with; the chosen `weight_format` then applies as for any other source.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from ..core.layout import check_local_checkpoint, has_component, is_hub_id

SINGLE_FILE_SUFFIXES = (".safetensors", ".gguf")
GGUF_SUFFIX = ".gguf"
# Where each part's tensors live in a single file (diffusers' single_file_utils reads the same prefixes).
TRANSFORMER_PREFIX = "model.diffusion_model."
TRANSFORMER_MARKER = "joint_blocks."  # a transformer-only file (ComfyUI, GGUF) has its keys without the prefix
VAE_PREFIXES = ("first_stage_model.", "vae.")
TEXT_ENCODER_PREFIXES = {
    "text_encoder": "text_encoders.clip_l.transformer.",
    "text_encoder_2": "text_encoders.clip_g.transformer.",
    "text_encoder_3": "text_encoders.t5xxl.transformer.",
}
FILE_COMPONENTS = ("transformer", "vae", *TEXT_ENCODER_PREFIXES)
# The official base of each family, as diffusers' `fetch_diffusers_config` infers it from the file's shapes.
FAMILY_BASES = ("sd3", "sd35_medium", "sd35_large")


def is_single_file(checkpoint) -> bool:
    """Whether `checkpoint` names a single-file checkpoint: an existing file ending in `.safetensors` or `.gguf`."""
    if not isinstance(checkpoint, (str, Path)):
        return False
    path = Path(checkpoint).expanduser()
    return path.suffix.lower() in SINGLE_FILE_SUFFIXES and path.is_file()


def file_keys(path: Path) -> list[str]:
    """The tensor names of a `.safetensors` or `.gguf` file, read from its header."""
    if path.suffix.lower() == GGUF_SUFFIX:
        import gguf

        return [tensor.name for tensor in gguf.GGUFReader(str(path)).tensors]
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as file:
        return list(file.keys())


def component_keys(keys: list[str], component: str) -> list[str]:
    """The keys of `keys` that hold `component`'s tensors in a single file."""
    if component == "transformer":
        prefixed = [key for key in keys if key.startswith(TRANSFORMER_PREFIX)]
        others = {key for name in FILE_COMPONENTS[1:] for key in component_keys(keys, name)}
        bare = [key for key in keys if key not in others]  # a transformer-only file (ComfyUI, GGUF): keys without the prefix
        found = prefixed or bare
        return found if any(key.removeprefix(TRANSFORMER_PREFIX).startswith(TRANSFORMER_MARKER) for key in found) else []
    if component == "vae":
        return [key for key in keys if key.startswith(VAE_PREFIXES)]
    return [key for key in keys if key.startswith(TEXT_ENCODER_PREFIXES[component])]


def read_tensors(path: Path, keys: list[str]) -> dict:
    """`keys`' tensors of the file at `path` as torch tensors (GGUF tensors dequantized to float32)."""
    if path.suffix.lower() == GGUF_SUFFIX:
        from diffusers.models.model_loading_utils import load_gguf_checkpoint
        from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor

        wanted = set(keys)
        tensors = {key: value for key, value in load_gguf_checkpoint(str(path)).items() if key in wanted}
        return {key: dequantize_gguf_tensor(value).float() if isinstance(value, GGUFParameter) else value for key, value in tensors.items()}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as file:
        return {key: file.get_tensor(key) for key in keys}


def infer_base(path: Path, keys: list[str]) -> str | None:
    """The official diffusers repository of the file's family (SD3 Medium, SD3.5 Medium or Large), as diffusers'
    `from_single_file` infers it from the transformer's shapes; None when the shapes are not an official model's."""
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES, DIFFUSERS_DEFAULT_PIPELINE_PATHS, infer_diffusers_model_type

    probe_keys = [key for name in ("sd3", "sd35_large") for key in CHECKPOINT_KEY_NAMES[name]]
    probe_keys += ["pos_embed", f"{TRANSFORMER_PREFIX}pos_embed"]
    present = [key for key in probe_keys if key in set(keys)]
    model_type = infer_diffusers_model_type(read_tensors(path, present)) if present else None
    return DIFFUSERS_DEFAULT_PIPELINE_PATHS[model_type]["pretrained_model_name_or_path"] if model_type in FAMILY_BASES else None


@dataclass(frozen=True)
class SingleFileCheckpoint(os.PathLike):
    """A single-file checkpoint and the diffusers checkpoint (`config`: a local folder or hub id) that supplies its
    configs, tokenizers, scheduler and the parts the file lacks. Made by `single_file_checkpoint`; converts like a
    checkpoint folder (`convert_sd3`), and `os.fspath` gives the file."""

    path: Path
    config: str
    components: tuple[str, ...]  # the parts the file holds (of FILE_COMPONENTS)
    config_inferred: bool = False  # `config` is the official base inferred from the file's shapes, not the user's

    def base_error(self, error: Exception) -> FileNotFoundError:
        """The error for a base that cannot be read: what it is for, and to pass `config=` a local folder."""
        how = "inferred from the file's shapes, as diffusers does" if self.config_inferred else "given as `config`"
        return FileNotFoundError(
            f"The single file {str(self.path)!r} reads its tokenizers, scheduler, configs and missing parts from its base "
            f"{self.config!r} ({how}), which could not be read: {error} Pass `config=` a local diffusers folder of the "
            "same family (CLI: --config)."
        )

    def __fspath__(self) -> str:
        return str(self.path)

    def check_base_index(self, model_index: dict) -> None:
        """Raise a ValueError if the file holds a T5 encoder and the base's `model_index` has none to configure it."""
        if "text_encoder_3" in self.components and not has_component(model_index, "text_encoder_3"):
            raise ValueError(
                f"The single file {str(self.path)!r} holds a T5 encoder but its base `config` {self.config!r} has none (no "
                "text_encoder_3 and tokenizer_3 to read its config and tokenizer from). Pass a base with T5, or load_t5=False."
            )

    def load_from_file(self, name: str, *, model_index: dict, torch_dtype=None):
        """Load the component `name` (one of `self.components`) from the file, configured by the base, in eval mode."""
        state_dict = read_tensors(self.path, component_keys(file_keys(self.path), name))
        library_name, class_name = model_index[name]
        options = {"subfolder": name, "config": self.config, "torch_dtype": torch_dtype, "local_files_only": not is_hub_id(self.config)}
        if library_name == "diffusers":
            import diffusers

            return getattr(diffusers, class_name).from_single_file(state_dict, **options).eval()
        import transformers
        from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm, create_diffusers_t5_model_from_checkpoint

        create = create_diffusers_t5_model_from_checkpoint if name == "text_encoder_3" else create_diffusers_clip_model_from_ldm
        # diffusers 0.39 leaves a T5 read from a single file in training mode (dropout active): eval() for all.
        return create(getattr(transformers, class_name), state_dict, **options).eval()


def single_file_checkpoint(path: str | Path, *, config: str | Path | None, load_t5: bool = True) -> SingleFileCheckpoint:
    """`path` (an SD3 / SD3.5 single file: `.safetensors` in the Stability / ComfyUI layout, or a GGUF transformer)
    as a conversion source, with `config` (a local diffusers folder or hub id) for what the file lacks.

    Without `config`, the official repository of the file's family is the base (as in diffusers), which needs the
    hub; a file whose family cannot be told from its shapes needs `config`. A ValueError names a file that is no SD3
    single file, and says what `config` must supply when it is needed and absent."""
    path = Path(path).expanduser()
    keys = file_keys(path)
    components = tuple(name for name in FILE_COMPONENTS if component_keys(keys, name))
    if "transformer" not in components:
        raise ValueError(
            f"{str(path)!r} is no SD3 / SD3.5 single-file checkpoint: it holds no MMDiT transformer (no `joint_blocks.*` "
            f"tensors; it starts with {keys[:3]}). Pass an SD3 single file (Stability / ComfyUI `.safetensors`, or a GGUF "
            "transformer), a diffusers folder or a hub id."
        )
    config_inferred = config is None
    if config is None:
        config = infer_base(path, keys)
        if config is None:
            raise ValueError(
                f"{str(path)!r} is a single file: its tokenizers, scheduler and configs{_missing_parts(components)} come from "
                "a base checkpoint, and its shapes are no official SD3 / SD3.5 model's, so the base cannot be inferred. Pass "
                "`config=` a local diffusers folder or hub id of the same family (CLI: --config)."
            )
    config = str(config)
    check_local_checkpoint(config, load_t5=load_t5 and "text_encoder_3" not in components)
    return SingleFileCheckpoint(path=path, config=config, components=components, config_inferred=config_inferred)


def _missing_parts(components: tuple[str, ...]) -> str:
    missing = [name for name in FILE_COMPONENTS if name not in components]
    return f" and the parts the file lacks ({', '.join(missing)})" if missing else ""
