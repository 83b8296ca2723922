"""Convert an SD3 / SD3.5 ControlNet (diffusers' `SD3ControlNetModel`) to OpenVINO IR: `convert_sd3_controlnet`.

A ControlNet folder is one submodel folder (`openvino_model.xml|bin`, `config.json`) plus the conversion record, so it
can sit anywhere, `model_dir / "controlnet"` included, without changing what optimum-intel and openvino.genai load from
the SD3 folder. The IR maps (latents, encoded control image, text, timestep, scale) to the residuals the transformer
adds after its blocks (`controlnet_block_samples.{k}`, already multiplied by `conditioning_scale`), as diffusers'
`SD3ControlNetModel.forward` returns them.

Both families diffusers supports: InstantX's (own patch embedding, joint blocks that read the text) and Stability's
SD3.5 ControlNets (`use_pos_embed=False`: they patch-embed the latents with the transformer's own `pos_embed`, which
diffusers' pipeline copies in at load time; here it is copied in at conversion from `base_model`, so the IR is
self-contained). The same weight formats and data safety as `convert_sd3`: fp32, fp16, int8 and int4 weights, the
folder written atomically and skipped when already converted from the same source with the same options.
"""

import gc
import json
from pathlib import Path

import torch

from ..core.files import check_output_outside_source, refuse_other_conversion, staged_dir, write_conversion_record
from ..core.layout import CONTROLNET_OUTPUT, is_converted, read_conversion_record
from .conversion import check_weight_format, export_ir, save_ir
from .ir import quiet_nncf
from .loading import quiet_progress_bars
from .modules import ExportSpec, compute_in_float32, factor_position_embedding
from .records import checkpoint_fingerprint

CONTROLNET_WEIGHT_FORMATS = ("fp32", "fp16", "int8", "int4")
CONTROLNET_RECORD_KIND = "sd3_controlnet"  # the conversion record's "kind" in a ControlNet folder


class ControlNetExport(torch.nn.Module):
    """SD3ControlNetModel -> (controlnet_block_samples.0, ...), each (B, image tokens, inner_dim), scaled."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, hidden_states, controlnet_cond, pooled_projections, timestep, conditioning_scale, encoder_hidden_states=None):
        return tuple(
            self.model(
                hidden_states=hidden_states,
                controlnet_cond=controlnet_cond,
                conditioning_scale=conditioning_scale,
                encoder_hidden_states=encoder_hidden_states,
                pooled_projections=pooled_projections,
                timestep=timestep,
                return_dict=False,
            )[0]
        )


def controlnet_spec(model) -> ExportSpec:
    """The export spec of an `SD3ControlNetModel` whose `pos_embed` is set (its own, or the transformer's)."""
    config = model.config
    latent_side = 8 * config.patch_size
    cond_channels = config.in_channels + config.extra_conditioning_channels
    example_input = {
        "hidden_states": torch.randn(2, config.in_channels, latent_side, latent_side),
        "controlnet_cond": torch.randn(2, cond_channels, latent_side, latent_side),
        "pooled_projections": torch.randn(2, config.pooled_projection_dim),
        "timestep": torch.tensor([500.0, 500.0]),
        "conditioning_scale": torch.ones(1),
    }
    input_shapes = {
        "hidden_states": [-1, config.in_channels, -1, -1],
        "controlnet_cond": [-1, cond_channels, -1, -1],
        "pooled_projections": [-1, config.pooled_projection_dim],
        "timestep": [-1],
        "conditioning_scale": [1],
    }
    if config.joint_attention_dim is not None:  # InstantX's blocks read the text; SD3.5's do not
        example_input["encoder_hidden_states"] = torch.randn(2, 16, config.joint_attention_dim)
        input_shapes["encoder_hidden_states"] = [-1, -1, config.joint_attention_dim]
    output_names = [f"{CONTROLNET_OUTPUT}.{index}" for index in range(len(model.controlnet_blocks))]
    return ExportSpec(ControlNetExport(model), example_input, input_shapes, output_names, source=model)


# ----------------------------------------------------------------------------------------------------------
# The transformer's patch embedding, for SD3.5 ControlNets
# ----------------------------------------------------------------------------------------------------------


def _transformer_files(base_model: str | Path) -> tuple[dict, list[Path]]:
    """The transformer's config and its safetensors files, from a local diffusers folder or the hub."""
    folder = Path(base_model) / "transformer"
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(str(base_model), allow_patterns=["transformer/*.json"])) / "transformer"
        except Exception as error:  # offline, gated, or not a repository: say what was asked for
            raise FileNotFoundError(
                f"`base_model` {str(base_model)!r} is neither a local diffusers SD3 folder with a `transformer/` folder nor a "
                f"reachable hub id ({type(error).__name__}: {error}). Pass the SD3 checkpoint the ControlNet is used with."
            ) from error
    config = json.loads((folder / "config.json").read_text())
    files = sorted(folder.glob("*.safetensors"))
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if not files and index.is_file():  # a hub snapshot: fetch the shard that holds `pos_embed`
        from huggingface_hub import hf_hub_download

        shard = json.loads(index.read_text())["weight_map"]["pos_embed.proj.weight"]
        files = [Path(hf_hub_download(str(base_model), f"transformer/{shard}"))]
    return config, files


def load_transformer_patch_embedding(base_model: str | Path):
    """The `pos_embed` (patch embedding and position table) of `base_model`'s transformer, read alone from its
    safetensors files (an SD3.5 Large transformer is 16 GB; this is a few MB), as diffusers'
    `SD3ControlNetModel._get_pos_embed_from_transformer` builds it."""
    from diffusers.models.embeddings import PatchEmbed
    from safetensors import safe_open

    config, files = _transformer_files(base_model)
    pos_embed = PatchEmbed(
        height=config["sample_size"],
        width=config["sample_size"],
        patch_size=config["patch_size"],
        in_channels=config["in_channels"],
        embed_dim=config["num_attention_heads"] * config["attention_head_dim"],
        pos_embed_max_size=config["pos_embed_max_size"],
    )
    wanted = {f"pos_embed.{name}" for name in pos_embed.state_dict()}
    state = {}
    for path in files:
        with safe_open(str(path), framework="pt") as file:
            state.update({key.removeprefix("pos_embed."): file.get_tensor(key) for key in wanted & set(file.keys())})
    if len(state) != len(wanted):
        raise ValueError(f"`base_model` {str(base_model)!r}: its transformer's weights lack {sorted(wanted - {f'pos_embed.{k}' for k in state})}.")
    pos_embed.load_state_dict(state, strict=True)
    return pos_embed


# ----------------------------------------------------------------------------------------------------------
# The conversion
# ----------------------------------------------------------------------------------------------------------


def _source(path_or_id: str | Path) -> dict:
    if Path(path_or_id).is_dir():
        return {"fingerprint": checkpoint_fingerprint(path_or_id), "path": str(Path(path_or_id).resolve())}
    return {"hub_id": str(path_or_id)}


def check_controlnet_output_dir(output_dir: Path) -> None:
    """Raise a ValueError if `output_dir` holds files that are not a ControlNet conversion (it would replace them)."""
    if not output_dir.is_dir() or not any(output_dir.iterdir()):
        return
    record = read_conversion_record(output_dir) or {}
    if record.get("kind") != CONTROLNET_RECORD_KIND:
        raise ValueError(
            f"`output_dir` `{output_dir}` holds other files (not a ControlNet conversion), which converting there would "
            f"replace. Choose a new or empty folder, e.g. `{output_dir / 'controlnet'}`."
        )


def _not_a_controlnet(checkpoint: str | Path, error: Exception) -> FileNotFoundError:
    return FileNotFoundError(
        f"Could not load an SD3 ControlNet from `{checkpoint}` ({type(error).__name__}: {error}). Pass a local folder in "
        "diffusers format (`config.json` and `diffusion_pytorch_model.safetensors`, as `SD3ControlNetModel.save_pretrained` "
        "writes) or a hub id such as `InstantX/SD3-Controlnet-Canny`."
    )


def _controlnet_class_and_config(checkpoint: str | Path):
    """diffusers' `SD3ControlNetModel` and `checkpoint`'s config (read alone: a few KB), or a FileNotFoundError."""
    from diffusers import SD3ControlNetModel

    try:
        return SD3ControlNetModel, SD3ControlNetModel.load_config(str(checkpoint))
    except (OSError, ValueError) as error:
        raise _not_a_controlnet(checkpoint, error) from error


def convert_sd3_controlnet(
    checkpoint: str | Path,
    output_dir: str | Path,
    *,
    weight_format: str = "fp16",
    base_model: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert an SD3 / SD3.5 ControlNet (a hub id or a local diffusers folder) to OpenVINO IR in `output_dir`; return it.

    `weight_format`: fp32, fp16, int8 or int4 (NNCF weight compression, as `convert_sd3`). `base_model` (the SD3
    checkpoint the ControlNet is used with) is needed by SD3.5 ControlNets only (`use_pos_embed=False`), whose latents go
    through the transformer's patch embedding; only that layer is read from it. The folder appears atomically with its
    conversion record; a folder already converted from the same source with the same options is kept as it is, one of
    another source or options is refused unless `overwrite=True`.
    """
    if weight_format not in CONTROLNET_WEIGHT_FORMATS:
        check_weight_format(weight_format)  # names every format when it is none of them
        raise ValueError(
            f"`weight_format` {weight_format!r} is for whole SD3 folders; a ControlNet converts to {list(CONTROLNET_WEIGHT_FORMATS)}."
        )
    output_dir = Path(output_dir)
    check_output_outside_source(checkpoint, output_dir)
    check_controlnet_output_dir(output_dir)
    controlnet_class, config = _controlnet_class_and_config(checkpoint)
    uses_transformer_embedding = config.get("use_pos_embed", True) is False
    if uses_transformer_embedding and base_model is None:
        raise ValueError(
            f"`{checkpoint}` is an SD3.5-style ControlNet (`use_pos_embed=False`): it embeds the latents with the "
            "transformer's patch embedding. Pass `base_model` (the SD3 checkpoint it is used with, e.g. "
            "'stabilityai/stable-diffusion-3.5-large')."
        )
    options = {"weight_format": weight_format, **({"base_model": _source(base_model)} if uses_transformer_embedding else {})}
    record = {"source": _source(checkpoint), "options": options, "kind": CONTROLNET_RECORD_KIND}
    if not overwrite:
        refuse_other_conversion(output_dir, record)
        if is_converted(output_dir) and read_conversion_record(output_dir) is not None:
            return output_dir
    torch_dtype = torch.float32 if weight_format == "fp32" else torch.float16
    try:
        with quiet_progress_bars():
            model = controlnet_class.from_pretrained(str(checkpoint), torch_dtype=torch_dtype)
    except (OSError, ValueError) as error:
        raise _not_a_controlnet(checkpoint, error) from error
    if uses_transformer_embedding:
        model.pos_embed = load_transformer_patch_embedding(base_model).to(torch_dtype)
    factor_position_embedding(model)
    model = compute_in_float32(model.eval()) if torch_dtype != torch.float32 else model.eval()
    spec = controlnet_spec(model)
    with quiet_nncf():
        ov_model = export_ir(spec, submodel="controlnet", weight_format=weight_format)
    with staged_dir(output_dir) as staging:
        save_ir(ov_model, staging, config_source=spec.source, weight_format=weight_format)
        write_conversion_record(staging, record)
    del model, spec, ov_model
    gc.collect()
    return output_dir


__all__ = ["CONTROLNET_WEIGHT_FORMATS", "controlnet_spec", "convert_sd3_controlnet", "load_transformer_patch_embedding"]
