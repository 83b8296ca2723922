"""The converted folder: its layout, how it is read, what it records, and the rules every layer shares.

This is the bottom layer; it imports no other module of the project. A folder written by `convert_sd3` is the
layout that optimum-intel and openvino.genai load:

    model_index.json    written last: a folder that has it is complete
    transformer/        openvino_model.xml|.bin + config.json
    text_encoder/       (CLIP-L)   "
    text_encoder_2/     (CLIP-G)   "
    text_encoder_3/     (T5-XXL, optional)
    vae_decoder/, vae_encoder/
    tokenizer/, tokenizer_2/, tokenizer_3/, scheduler/

How a folder is written (staging, publishing, the conversion record, clean-up) is `core/files.py`; this module
only names and reads.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

MODEL_INDEX = "model_index.json"
OV_MODEL_XML = "openvino_model.xml"
OV_MODEL_BIN = "openvino_model.bin"
CONFIG_JSON = "config.json"
SCHEDULER_CONFIG = "scheduler_config.json"
OV_TOKENIZER_XML = "openvino_tokenizer.xml"  # openvino.genai reads the tokenizers from these

WEIGHT_FORMATS = ("fp32", "fp16", "int8", "int4", "int8-hybrid")  # int8-hybrid: see export/quantization.py
HYBRID_WEIGHT_FORMAT = "int8-hybrid"
RT_INFO_WEIGHT_FORMAT = ["sd3_helper", "weight_format"]  # where a converted IR records its weight format

BLOCK_MASK = "block_mask"  # the transformer IR's state: 1 runs a block, 0 skips it (skip-layer guidance)
CONTROLNET_OUTPUT = "controlnet_block_samples"  # a ControlNet IR's outputs: `controlnet_block_samples.{k}`, one per block
PIPELINE_SUBMODELS = ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae_decoder")
CONFIGURABLE_SUBMODELS = PIPELINE_SUBMODELS + ("vae_encoder", "controlnet")  # the keys of per-submodel `device` / `ov_config` dicts
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
TOKENIZERS = ("tokenizer", "tokenizer_2", "tokenizer_3")
COPIED_COMPONENTS = TOKENIZERS + ("scheduler",)


# ----------------------------------------------------------------------------------------------------------
# Generation defaults and size rules: one place for every layer (pipeline, genai factory, CLI, demo)
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationDefaults:
    """Defaults of a text-to-image call, those of diffusers' `StableDiffusion3Pipeline.__call__`."""

    num_inference_steps: int = 28  # SD3 Medium's recommended number of steps
    guidance_scale: float = 7.0  # classifier-free guidance; <= 1 turns it off
    max_sequence_length: int = 256  # T5 tokens read from the prompt (at most 512)


GENERATION_DEFAULTS = GenerationDefaults()


def linear_node_name(module_path: str) -> str:
    """The IR name of an `nn.Linear`'s MatMul, by its module path in the diffusers / transformers model
    (optimum-intel's naming, which openvino.genai's LoRA matching and `sd3_lora` read)."""
    return f"__module.{module_path}/aten::linear/MatMul"


def block_output_name(index: int) -> str:
    """The friendly name of the op that gives transformer block `index`'s image stream (after its skip gate) in a
    transformer IR; ControlNet residuals are added there (see `runtime/controlnet.py`)."""
    return f"transformer_blocks.{index}/hidden_states_out"


def controlnet_state_name(index: int) -> str:
    """The OpenVINO state that holds the ControlNet residual added after transformer block `index`."""
    return f"controlnet/transformer_blocks.{index}"


# An IP-Adapter folder (`convert_sd3_ip_adapter`): three IRs, each with its `config.json`, and the conversion record.
IP_ADAPTER_RECORD_KIND = "sd3_ip_adapter"  # the conversion record's "kind" in an IP-Adapter folder
IP_ADAPTER_PARTS = ("image_encoder", "image_projection", "attention")  # SigLIP, the resampler, the blocks' image attention
IP_ADAPTER_INPUTS = ("ip_hidden_states", "ip_temb", "ip_scale")  # the transformer's inputs once an IP-Adapter is stitched in
IP_ATTENTION_OUTPUT = "ip_attention"  # the attention IR's outputs: `ip_attention.{k}`, one per transformer block


def ip_attention_input_name(projection: str, index: int) -> str:
    """The attention IR's input that reads block `index`'s `projection` ("query", "key" or "value") output."""
    return f"{projection}.{index}"


def vae_scale_factor(vae_config: dict) -> int:
    """Pixels per latent cell: each VAE block but the last halves the resolution (8 for SD3)."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


@dataclass(frozen=True)
class SizeRules:
    """Image sides a model accepts, in pixels: multiples of `multiple` from `multiple` to `maximum`."""

    vae_scale_factor: int  # pixels per latent cell
    patch_size: int  # latent cells per transformer patch (side)
    maximum: int  # pos_embed_max_size patches, in pixels
    default: int  # the model's native size: sample_size latent cells, in pixels

    @classmethod
    def from_configs(cls, *, transformer_config: dict, vae_config: dict) -> "SizeRules":
        """Read the rules from the transformer's and the VAE's `config.json` contents."""
        scale, patch_size = vae_scale_factor(vae_config), transformer_config["patch_size"]
        return cls(
            vae_scale_factor=scale,
            patch_size=patch_size,
            maximum=transformer_config["pos_embed_max_size"] * patch_size * scale,
            default=transformer_config["sample_size"] * scale,
        )

    @property
    def multiple(self) -> int:
        """Sides are multiples of one latent patch: vae_scale_factor * patch_size pixels."""
        return self.vae_scale_factor * self.patch_size

    def snap(self, side: int) -> int:
        """The accepted side nearest to `side`."""
        return min(max(round(side / self.multiple) * self.multiple, self.multiple), self.maximum)

    def check(self, *, height: int, width: int) -> None:
        """Raise a ValueError naming `height` and `width` and the nearest accepted sizes if they are not accepted."""
        if height % self.multiple != 0 or width % self.multiple != 0:
            raise ValueError(
                f"`height` and `width` have to be divisible by {self.multiple} (vae_scale_factor {self.vae_scale_factor} x "
                f"patch_size {self.patch_size}) "
                f"but are {height} and {width}. Try {self.snap(height)} and {self.snap(width)}."
            )
        if not (0 < height <= self.maximum and 0 < width <= self.maximum):
            raise ValueError(
                f"`height` and `width` must be between {self.multiple} and {self.maximum} for this model but are "
                f"{height} and {width}. Try {self.snap(height)} and {self.snap(width)}."
            )


def folder_size(path: str | Path) -> int:
    """The size in bytes of all files under `path`."""
    return sum(file.stat().st_size for file in Path(path).rglob("*") if file.is_file())


# ----------------------------------------------------------------------------------------------------------
# What a folder records
# ----------------------------------------------------------------------------------------------------------


def incomplete_model_error(path: Path, model_dir: Path, reason: str) -> str:
    """The message for a damaged or incomplete converted folder: the file, what is wrong, and the fix."""
    return (
        f"`{path}` {reason}. The OpenVINO model folder `{model_dir}` is incomplete or damaged: re-run "
        f"`convert_sd3(checkpoint, {str(model_dir)!r}, overwrite=True)` (or `python sd3_helper.py convert`)."
    )


def is_converted(submodel_dir: Path) -> bool:
    """True when `submodel_dir` holds a finished IR (published folders are complete by construction)."""
    return all((submodel_dir / name).is_file() for name in (OV_MODEL_XML, OV_MODEL_BIN, CONFIG_JSON))


def check_bin_size(xml_path: Path, bin_path: Path, model_dir: Path) -> None:
    """Raise a ValueError naming `bin_path` if it is shorter than the weights the IR at `xml_path` reads."""
    ends = [int(offset) + int(size) for offset, size in re.findall(rb'offset="(\d+)" size="(\d+)"', xml_path.read_bytes())]
    if ends and max(ends) > bin_path.stat().st_size:
        reason = f"is truncated ({bin_path.stat().st_size} bytes, the IR needs {max(ends)})"
        raise ValueError(incomplete_model_error(bin_path, model_dir, reason))


def recorded_weight_format(submodel_dir: Path) -> str | None:
    """The weight format a converted IR records in its rt_info (None for IRs written by other tools).

    Read from `openvino_model.xml` with the standard library: the model's own `<rt_info>` is a child of `<net>`
    (layers have rt_info of their own, one level deeper), after the layers and edges, which are dropped as read."""
    import xml.etree.ElementTree as ElementTree

    section, key = RT_INFO_WEIGHT_FORMAT
    depth = 0
    for event, element in ElementTree.iterparse(submodel_dir / OV_MODEL_XML, events=("start", "end")):
        depth += 1 if event == "start" else -1
        if event == "end" and depth == 1:  # a child of <net>
            if element.tag == "rt_info":
                value = element.find(f"{section}/{key}")
                return None if value is None else value.get("value")
            element.clear()
    return None


def read_json(path: Path, *, model_dir: Path) -> dict:
    """The JSON object in `path`, or an error that names the file, what is wrong and the fix (reconvert)."""
    if not path.is_file():
        raise FileNotFoundError(incomplete_model_error(path, model_dir, "is missing"))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(incomplete_model_error(path, model_dir, f"is not valid JSON ({error})")) from error
    if not isinstance(data, dict):
        raise ValueError(incomplete_model_error(path, model_dir, f"holds a {type(data).__name__}, not a JSON object"))
    return data


def read_model_index(model_dir: str | Path) -> dict:
    """`model_index.json` of a converted folder, with named errors for a missing folder or a damaged file."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"`{model_dir}` does not exist. Convert a model into it first: "
            f"`convert_sd3(checkpoint, {str(model_dir)!r})` or `python sd3_helper.py convert CHECKPOINT {model_dir}`."
        )
    index_path = model_dir / MODEL_INDEX
    if not index_path.is_file():
        reason = "is missing (it is written last, when a conversion finishes)"
        raise FileNotFoundError(incomplete_model_error(index_path, model_dir, reason))
    return read_json(index_path, model_dir=model_dir)


def has_component(model_index: dict, name: str) -> bool:
    """True when `model_index.json` lists component `name` (a T5-less folder lists `text_encoder_3` as null)."""
    entry = model_index.get(name)
    return isinstance(entry, list) and len(entry) == 2 and entry[0] is not None


# Keys each submodel's `config.json` must hold for the runtime (read from the configs, never hard-coded).
REQUIRED_CONFIG_KEYS = {
    "transformer": ("in_channels", "patch_size", "sample_size", "pos_embed_max_size", "joint_attention_dim", "pooled_projection_dim"),
    "text_encoder": ("num_hidden_layers",),
    "text_encoder_2": ("num_hidden_layers",),
    "text_encoder_3": (),
    "vae_decoder": ("block_out_channels", "latent_channels", "scaling_factor"),
}


def check_config_keys(config: dict, *, submodel: str, path: Path, model_dir: Path) -> None:
    """Raise a ValueError naming `path` and the missing keys if `config` lacks what the runtime reads."""
    missing = [key for key in REQUIRED_CONFIG_KEYS.get(submodel, ()) if key not in config]
    if missing:
        raise ValueError(incomplete_model_error(path, model_dir, f"lacks the keys {missing}"))


def check_sd3_index(model_index: dict, *, where: str) -> None:
    """Raise a ValueError if a `model_index.json` does not describe a Stable Diffusion 3 pipeline."""
    class_name = model_index.get("_class_name")
    if not (isinstance(class_name, str) and class_name.startswith(("StableDiffusion3", "OVStableDiffusion3"))):
        raise ValueError(
            f"{where} is not an SD3 checkpoint: `_class_name` is {class_name!r} in its model_index.json, where "
            "'StableDiffusion3Pipeline' was expected. Pass a Stable Diffusion 3 (or 3.5) checkpoint in diffusers format."
        )


# ----------------------------------------------------------------------------------------------------------
# The source: a diffusers checkpoint, checked before a conversion loads anything
# ----------------------------------------------------------------------------------------------------------

# The components a conversion reads from a diffusers checkpoint, and the file each one's folder must hold.
CHECKPOINT_COMPONENT_FILES = {
    "transformer": CONFIG_JSON,
    "text_encoder": CONFIG_JSON,
    "text_encoder_2": CONFIG_JSON,
    "text_encoder_3": CONFIG_JSON,  # with T5 only
    "vae": CONFIG_JSON,
    "tokenizer": "tokenizer_config.json",
    "tokenizer_2": "tokenizer_config.json",
    "tokenizer_3": "tokenizer_config.json",  # with T5 only
    "scheduler": SCHEDULER_CONFIG,
}
HUB_ID = re.compile(r"(\w|\w[\w.-]*\w)/(\w|\w[\w.-]*\w)")  # "namespace/name", as the Hugging Face hub spells repository ids


def is_hub_id(checkpoint: str | Path) -> bool:
    """True when `checkpoint` means a Hugging Face hub id: a str "namespace/name" that is no local folder."""
    return isinstance(checkpoint, str) and HUB_ID.fullmatch(checkpoint) is not None and not Path(checkpoint).exists()


def check_local_checkpoint(checkpoint: str | Path, *, load_t5: bool = True) -> dict | None:
    """The `model_index.json` of the local diffusers checkpoint `checkpoint` once every component a conversion reads
    (T5 and its tokenizer only with `load_t5`) has its folder and its config file; None for a hub id (checked when
    it is downloaded). A FileNotFoundError names what is missing, a ValueError a checkpoint of another kind: before
    any work, with the standard library only."""
    if is_hub_id(checkpoint):
        return None
    folder = Path(checkpoint).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"The checkpoint `{checkpoint}` {'is a file' if folder.exists() else 'does not exist'}. Pass a local folder in "
            "diffusers format (it contains `model_index.json`), a single-file checkpoint (`.safetensors` or a GGUF "
            "transformer `.gguf`) or a Hugging Face hub id such as `stabilityai/stable-diffusion-3-medium-diffusers`."
        )
    index_path = folder / MODEL_INDEX
    if not index_path.is_file():
        raise FileNotFoundError(
            f"`{MODEL_INDEX}` in `{checkpoint}` is missing: it is no checkpoint in diffusers format. Pass the folder "
            "that holds `model_index.json` (`save_pretrained` writes it, as does a download of the whole model repository)."
        )
    try:
        model_index = json.loads(index_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"`{index_path}` is not valid JSON ({error}); download or save the checkpoint again.") from error
    check_sd3_index(model_index if isinstance(model_index, dict) else {}, where=f"`{checkpoint}`")
    for name, config_file in CHECKPOINT_COMPONENT_FILES.items():
        if name in ("text_encoder_3", "tokenizer_3") and not (load_t5 and has_component(model_index, name)):
            continue
        if not has_component(model_index, name):
            raise ValueError(
                f"The `{MODEL_INDEX}` of `{checkpoint}` lists no `{name}`, which the conversion reads; an SD3 checkpoint "
                "in diffusers format lists transformer, text_encoder, text_encoder_2, tokenizer, tokenizer_2, scheduler and vae."
            )
        missing = f"`{name}/`" if not (folder / name).is_dir() else f"`{name}/{config_file}`"
        if not (folder / name / config_file).is_file():
            raise FileNotFoundError(
                f"{missing} in `{checkpoint}` is missing: its `{MODEL_INDEX}` names the component `{name}`, which the "
                "conversion reads. Copy the whole checkpoint folder again (each component's folder with its files)."
            )
    return model_index


# ----------------------------------------------------------------------------------------------------------
# Where a folder came from (written and compared by `core/files.py`)
# ----------------------------------------------------------------------------------------------------------

CONVERSION_RECORD = "openvino_conversion.json"  # the source and options a folder was converted with
INFORMATIONAL_SOURCE_KEYS = ("path",)  # recorded for the reader, not compared (a moved checkpoint is the same)


def read_conversion_record(output_dir: Path) -> dict | None:
    """What `output_dir` records it was converted from and with which options, or None if it records nothing."""
    path = Path(output_dir) / CONVERSION_RECORD
    return read_json(path, model_dir=Path(output_dir)) if path.is_file() else None
