"""Convert an SD3 IP-Adapter to OpenVINO IR: `convert_sd3_ip_adapter`.

The adapter is read as diffusers' `SD3IPAdapterMixin.load_ip_adapter` reads it (InstantX's SD3.5-Large-IP-Adapter
layout: `image_proj.*` for the timestep-aware resampler, `ip_adapter.{block}.*` for each joint attention block's image
key / value projections and norms) and built into diffusers' own modules (`IPAdapterTimeImageProjection`,
`SD3IPAdapterJointAttnProcessor2_0`). Three IRs come out, one folder:

    image_encoder/      SiglipVisionModel -> its penultimate hidden states (+ preprocessor_config.json)
    image_projection/   (image features, timestep) -> (ip_hidden_states, ip_temb), the resampler of each step
    attention/          every block's image attention: (query.k, key.k, value.k of block k, ip_hidden_states,
                        ip_temb, ip_scale) -> ip_attention.k, to be added before block k's output projection
    openvino_conversion.json

The transformer IR is not touched: the runtime stitches `attention/` into the loaded transformer graph
(`runtime/ip_adapter.py`), so optimum-intel and openvino.genai load the SD3 folder as before. Weights are compressed
at the SD3 folder's format (int4 and int8-hybrid folders get int8 adapters: these models are small and
attention-heavy). The folder appears atomically with its record; the same source and options convert once.
"""

import gc
import json
import types
from pathlib import Path

import torch

from ..core.files import refuse_other_conversion, staged_dir, write_conversion_record
from ..core.layout import (
    CONFIG_JSON,
    IP_ADAPTER_INPUTS,
    IP_ADAPTER_PARTS,
    IP_ADAPTER_RECORD_KIND,
    IP_ATTENTION_OUTPUT,
    OV_MODEL_XML,
    RT_INFO_WEIGHT_FORMAT,
    WEIGHT_FORMATS,
    ip_attention_input_name,
    is_converted,
    is_hub_id,
    read_conversion_record,
    read_json,
    recorded_weight_format,
)
from ..runtime.ip_adapter import check_no_dual_attention
from .conversion import export_ir
from .ir import compress_weights, quiet_nncf
from .loading import quiet_progress_bars
from .modules import ExportSpec
from .records import checkpoint_fingerprint, file_fingerprint

DEFAULT_WEIGHT_NAME = "ip-adapter.safetensors"  # diffusers' default `weight_name`
PREPROCESSOR_CONFIG = "preprocessor_config.json"
ADAPTER_WEIGHT_FORMATS = {"fp32": "fp32", "fp16": "fp16", "int8": "int8", "int4": "int8", "int8-hybrid": "int8"}


# ----------------------------------------------------------------------------------------------------------
# Reading the adapter as diffusers does
# ----------------------------------------------------------------------------------------------------------


def _adapter_file(source: str | Path, *, weight_name: str, subfolder: str | None) -> Path:
    """The adapter's weight file: `source` itself, `source/subfolder/weight_name`, or that file from the hub."""
    if Path(source).is_file():
        return Path(source)
    local = Path(source, subfolder or "", weight_name)
    if local.is_file():
        return local
    if Path(source).is_dir() or not is_hub_id(source):
        raise FileNotFoundError(
            f"`pretrained_model_name_or_path_or_dict` {str(source)!r} holds no `{Path(subfolder or '', weight_name)}`. Pass the "
            "folder that holds the adapter's weights and its `weight_name` (InstantX's is 'ip-adapter.bin'), or a hub id."
        )
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(str(source), weight_name, subfolder=subfolder))
    except Exception as error:  # offline, gated, or not a repository: say what was asked for
        raise FileNotFoundError(
            f"Could not fetch `{weight_name}` of the hub repository {str(source)!r} ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]}). Download it and pass the local folder."
        ) from error


def read_ip_adapter_state_dict(source, *, weight_name: str = DEFAULT_WEIGHT_NAME, subfolder: str | None = None) -> dict:
    """The adapter's weights as diffusers' `load_ip_adapter` reads them: `{"image_proj": {...}, "ip_adapter": {...}}`
    from a `.safetensors` file (keys prefixed `image_proj.` / `ip_adapter.`), a torch `.bin` file, or a state dict."""
    if isinstance(source, dict):
        state = source
    elif isinstance(source, (str, Path)):
        path = _adapter_file(source, weight_name=weight_name, subfolder=subfolder)
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            state = {"image_proj": {}, "ip_adapter": {}}
            with safe_open(str(path), framework="pt") as file:
                for key in file.keys():
                    part, _, name = key.partition(".")
                    if part in state:
                        state[part][name] = file.get_tensor(key)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        raise TypeError(
            "`pretrained_model_name_or_path_or_dict` has to be a folder, a file, a hub id or a state dict but is "
            f"{type(source).__name__}."
        )
    if not isinstance(state, dict) or not state.get("image_proj") or not state.get("ip_adapter"):
        raise ValueError(
            f"{_describe(source)} is not an SD3 IP-Adapter: it has no `image_proj` and `ip_adapter` weights (InstantX's "
            "layout, as diffusers' `SD3IPAdapterMixin` reads it)."
        )
    return state


def _describe(source) -> str:
    return "The state dict" if isinstance(source, dict) else f"`{source}`"


def image_encoder_location(source, *, subfolder: str | None, image_encoder_folder: str | None) -> tuple[str, str | None] | None:
    """Where the SigLIP image encoder is, as `(path or hub id, subfolder)` for `from_pretrained`, or None.

    diffusers' meaning, without its TypeError: a name without "/" is a folder beside the adapter's weights (inside
    `subfolder`), anything else a folder or hub id of its own (InstantX's card passes "google/siglip-so400m-patch14-384").
    """
    if image_encoder_folder is None:
        return None
    if not isinstance(image_encoder_folder, (str, Path)):
        raise TypeError(f"`image_encoder_folder` has to be a str (a folder name, a path or a hub id) or None but is {image_encoder_folder!r}.")
    folder = str(image_encoder_folder)
    if Path(folder).is_dir():
        return folder, None
    if "/" in folder:
        if not is_hub_id(folder):
            raise FileNotFoundError(f"`image_encoder_folder` {folder!r} is neither a folder nor a hub id such as 'google/siglip-so400m-patch14-384'.")
        return folder, None
    if isinstance(source, dict):
        raise ValueError(
            f"`image_encoder_folder` {folder!r} names a folder beside the adapter's weights, but the adapter is a state dict. Pass "
            "the image encoder's own folder or hub id (e.g. 'google/siglip-so400m-patch14-384'), or None and give "
            "`ip_adapter_image_embeds` to the calls."
        )
    beside = Path(source, subfolder or "", folder) if Path(source).is_dir() else Path(source).parent / folder
    if beside.is_dir():
        return str(beside), None
    if Path(source).exists() or not is_hub_id(source):
        raise FileNotFoundError(
            f"`image_encoder_folder` {folder!r}: there is no `{beside}`. Pass the SigLIP image encoder's folder or hub id "
            "(InstantX's SD3.5 Large adapter uses 'google/siglip-so400m-patch14-384'), or None and give "
            "`ip_adapter_image_embeds` to the calls."
        )
    return str(source), Path(subfolder or "", folder).as_posix()


# ----------------------------------------------------------------------------------------------------------
# diffusers' modules, checked against the transformer
# ----------------------------------------------------------------------------------------------------------


def build_image_projection(image_proj_state: dict):
    """diffusers' `IPAdapterTimeImageProjection` with InstantX's `image_proj` weights (diffusers' own key conversion)."""
    from diffusers.loaders.transformer_sd3 import SD3Transformer2DLoadersMixin

    stand_in = types.SimpleNamespace(device=torch.device("cpu"), dtype=torch.float32)
    try:
        return SD3Transformer2DLoadersMixin._convert_ip_adapter_image_proj_to_diffusers(stand_in, image_proj_state, low_cpu_mem_usage=False).eval()
    except (KeyError, RuntimeError) as error:
        raise ValueError(f"The adapter's `image_proj` weights are not an SD3 IP-Adapter resampler ({type(error).__name__}: {str(error)[:300]}).") from error


def build_attention_processors(ip_adapter_state: dict, *, transformer_config: dict) -> list:
    """One diffusers `SD3IPAdapterJointAttnProcessor2_0` per transformer block, with the adapter's weights; a named
    ValueError when the adapter was made for another transformer (block count, widths)."""
    from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0

    num_layers = transformer_config["num_layers"]
    head_dim = transformer_config["attention_head_dim"]
    width = head_dim * transformer_config["num_attention_heads"]
    by_block = {}
    for key, value in ip_adapter_state.items():
        index, _, name = key.partition(".")
        by_block.setdefault(int(index) if index.isdigit() else index, {})[name] = value
    if set(by_block) != set(range(num_layers)):
        raise ValueError(
            f"The IP-Adapter has image attention for {len(by_block)} blocks, this transformer has {num_layers}: it was made "
            "for another model. Use an adapter trained for this one (InstantX/SD3.5-Large-IP-Adapter for SD3.5 Large)."
        )
    to_k_ip = by_block[0].get("to_k_ip.weight")
    if to_k_ip is None or tuple(to_k_ip.shape) != (width, width):
        shape = None if to_k_ip is None else tuple(to_k_ip.shape)
        raise ValueError(
            f"The IP-Adapter's image key projection (`ip_adapter.0.to_k_ip.weight`) has shape {shape}; this transformer's "
            f"attention is {width} wide, so it needs ({width}, {width}). The adapter was made for another model."
        )
    processors = []
    for index in range(num_layers):
        processor = SD3IPAdapterJointAttnProcessor2_0(
            hidden_size=width, ip_hidden_states_dim=width, head_dim=head_dim, timesteps_emb_dim=by_block[index]["norm_ip.linear.weight"].shape[1]
        )
        try:
            processor.load_state_dict(by_block[index], strict=True)
        except RuntimeError as error:
            raise ValueError(f"The IP-Adapter's block {index} does not fit this transformer: {str(error).splitlines()[0][:300]}") from error
        processors.append(processor.eval())
    return processors


def check_resampler_fits(image_projection, processors: list, *, image_encoder_width: int | None) -> None:
    """Raise a ValueError when the resampler's output or the image encoder's width does not fit what reads it."""
    out_width, temb_width = image_projection.proj_out.out_features, image_projection.time_embedding.linear_2.out_features
    ip_width, ip_temb = processors[0].to_k_ip.in_features, processors[0].norm_ip.linear.in_features
    if (out_width, temb_width) != (ip_width, ip_temb):
        raise ValueError(
            f"The IP-Adapter's resampler gives features {out_width} wide and timestep embeddings {temb_width} wide, but its "
            f"attention reads {ip_width} and {ip_temb}: the `image_proj` and `ip_adapter` weights come from different adapters."
        )
    embed_width = image_projection.proj_in.in_features
    if image_encoder_width is not None and image_encoder_width != embed_width:
        raise ValueError(
            f"The image encoder gives features {image_encoder_width} wide, but the IP-Adapter's resampler reads {embed_width} "
            "(`image_proj.proj_in`). Pass the image encoder the adapter was trained with as `image_encoder_folder` "
            "(InstantX's SD3.5 Large adapter: 'google/siglip-so400m-patch14-384')."
        )


def load_image_encoder(location: tuple[str, str | None]):
    """The SigLIP vision model and its preprocessing config at `location` (see `image_encoder_location`)."""
    from transformers import SiglipImageProcessor, SiglipVisionModel

    path, subfolder = location
    extra = {"subfolder": subfolder} if subfolder else {}
    try:
        with quiet_progress_bars():
            model = SiglipVisionModel.from_pretrained(path, torch_dtype=torch.float32, **extra).eval()
        processor = SiglipImageProcessor.from_pretrained(path, **extra)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(
            f"Could not load a SigLIP image encoder from {path!r}{f' (subfolder {subfolder!r})' if subfolder else ''} "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]}). Pass `image_encoder_folder`: a folder or hub id "
            "with `SiglipVisionModel` weights and `preprocessor_config.json`."
        ) from error
    return model, processor


# ----------------------------------------------------------------------------------------------------------
# What is traced
# ----------------------------------------------------------------------------------------------------------


class ImageEncoderExport(torch.nn.Module):
    """SiglipVisionModel -> its penultimate hidden states (diffusers' `encode_image`: `hidden_states[-2]`)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-2]


class ImageProjectionExport(torch.nn.Module):
    """IPAdapterTimeImageProjection: (image features, timestep) -> (ip_hidden_states, ip_temb)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image_embeds, timestep):
        return self.model(image_embeds, timestep)


class BlockImageAttention(torch.nn.Module):
    """One block's image attention: the IP-Adapter branch of diffusers' `SD3IPAdapterJointAttnProcessor2_0.__call__`,
    from the block's own query / key / value projections (B, tokens, width), times the scale."""

    def __init__(self, processor, *, heads: int):
        super().__init__()
        self.processor, self.heads = processor, heads

    def forward(self, query, key, value, ip_hidden_states, ip_temb, ip_scale):
        # Adapted from diffusers' SD3IPAdapterJointAttnProcessor2_0.__call__ ("IP Adapter" part).
        processor, batch_size = self.processor, query.shape[0]
        head_dim = query.shape[-1] // self.heads

        def by_head(tensor):  # (B, tokens, width) -> (B, heads, tokens, head_dim)
            return tensor.reshape(batch_size, -1, self.heads, head_dim).transpose(1, 2)

        norm_ip_hidden_states = processor.norm_ip(ip_hidden_states, temb=ip_temb)
        ip_key = processor.norm_ip_k(by_head(processor.to_k_ip(norm_ip_hidden_states)))
        ip_value = by_head(processor.to_v_ip(norm_ip_hidden_states))
        keys = torch.cat([processor.norm_k(by_head(key)), ip_key], dim=2)
        values = torch.cat([by_head(value), ip_value], dim=2)
        attended = torch.nn.functional.scaled_dot_product_attention(processor.norm_q(by_head(query)), keys, values)
        return attended.transpose(1, 2).reshape(batch_size, -1, self.heads * head_dim) * ip_scale


def _image_encoder_spec(model) -> ExportSpec:
    config = model.config
    side = config.image_size
    return ExportSpec(
        module=ImageEncoderExport(model),
        example_input={"pixel_values": torch.randn(2, config.num_channels, side, side)},
        input_shapes={"pixel_values": [-1, config.num_channels, side, side]},
        output_names=["image_embeds"],
        source=model,
    )


def _image_projection_spec(model) -> ExportSpec:
    embed_width = model.proj_in.in_features
    return ExportSpec(
        module=ImageProjectionExport(model),
        example_input={"image_embeds": torch.randn(2, 7, embed_width), "timestep": torch.tensor([500.0, 500.0])},
        input_shapes={"image_embeds": [-1, -1, embed_width], "timestep": [-1]},
        output_names=list(IP_ADAPTER_INPUTS[:2]),
        source=model,
    )


def _block_attention_spec(processor, *, heads: int, num_queries: int) -> ExportSpec:
    width, ip_width, temb_width = processor.to_k_ip.out_features, processor.to_k_ip.in_features, processor.norm_ip.linear.in_features
    projections = {name: torch.randn(2, 12, width) for name in ("query", "key", "value")}
    ip_hidden_states, ip_temb, ip_scale = IP_ADAPTER_INPUTS
    example_input = {**projections, ip_hidden_states: torch.randn(2, num_queries, ip_width), ip_temb: torch.randn(2, temb_width), ip_scale: torch.ones(1)}
    input_shapes = {
        **{name: [-1, -1, width] for name in projections},
        ip_hidden_states: [-1, num_queries, ip_width],
        ip_temb: [-1, temb_width],
        ip_scale: [1],
    }
    return ExportSpec(BlockImageAttention(processor, heads=heads), example_input, input_shapes, [IP_ATTENTION_OUTPUT], source=processor)


def _merged_attention_model(block_models: list):
    """One OpenVINO model of the blocks' image attention: the shared inputs (`IP_ADAPTER_INPUTS`) once, block k's
    projections as `query.k` / `key.k` / `value.k`, its result as `ip_attention.k`."""
    import openvino as ov

    shared = {name: next(p for p in block_models[0].get_parameters() if name in p.output(0).get_names()) for name in IP_ADAPTER_INPUTS}
    parameters, results = list(shared.values()), []
    for index, model in enumerate(block_models):
        for parameter in model.get_parameters():
            name = parameter.output(0).get_any_name()
            if name in shared:
                if parameter is not shared[name]:
                    for target in list(parameter.output(0).get_target_inputs()):
                        target.replace_source_output(shared[name].output(0))
                continue
            parameter.output(0).get_tensor().set_names({ip_attention_input_name(name, index)})
            parameter.set_friendly_name(ip_attention_input_name(name, index))
            parameters.append(parameter)
        result = model.get_results()[0]
        result.output(0).get_tensor().set_names({f"{IP_ATTENTION_OUTPUT}.{index}"})
        results.append(result)
    merged = ov.Model(results, parameters, "ip_adapter_attention")
    merged.validate_nodes_and_infer_types()
    return merged


# ----------------------------------------------------------------------------------------------------------
# The conversion
# ----------------------------------------------------------------------------------------------------------


def _source_record(source, *, weight_name: str, subfolder: str | None) -> dict:
    if isinstance(source, dict):
        import hashlib

        digest = hashlib.sha256()
        for part in ("image_proj", "ip_adapter"):
            for key in sorted(source[part]):
                digest.update(key.encode() + source[part][key].detach().float().cpu().numpy().tobytes())
        return {"state_dict_sha256": digest.hexdigest()}
    if Path(source).is_file():
        return {"fingerprint": file_fingerprint(source), "path": str(Path(source).resolve())}
    local = Path(source, subfolder or "", weight_name)
    if local.is_file():
        return {"fingerprint": file_fingerprint(local), "path": str(local.resolve())}
    return {"hub_id": str(source), "weight_name": weight_name, "subfolder": subfolder}


def _encoder_record(location: tuple[str, str | None] | None) -> dict | None:
    if location is None:
        return None
    path, subfolder = location
    if Path(path).is_dir() and not subfolder:
        return {"fingerprint": checkpoint_fingerprint(path), "path": str(Path(path).resolve())}
    return {"hub_id": path, "subfolder": subfolder}


def _save_part(ov_model, directory: Path, *, config: dict, weight_format: str) -> None:
    import openvino as ov

    ov.save_model(ov_model, directory / OV_MODEL_XML, compress_to_fp16=weight_format != "fp32")
    (directory / CONFIG_JSON).write_text(json.dumps(config, indent=2))


def adapter_weight_format(model_dir: Path, weight_format: str | None) -> str:
    """The adapter's weight format: `weight_format`, or the SD3 folder's (int4 and int8-hybrid folders: int8)."""
    if weight_format is None:
        weight_format = recorded_weight_format(model_dir / "transformer") or "fp16"
    if weight_format not in ADAPTER_WEIGHT_FORMATS:
        raise ValueError(f"`weight_format` must be one of {list(WEIGHT_FORMATS)} or None (the SD3 folder's) but is {weight_format!r}.")
    return ADAPTER_WEIGHT_FORMATS[weight_format]


def convert_sd3_ip_adapter(
    pretrained_model_name_or_path_or_dict,
    output_dir: str | Path,
    *,
    model_dir: str | Path,
    weight_name: str = DEFAULT_WEIGHT_NAME,
    subfolder: str | None = None,
    image_encoder_folder: str | None = "image_encoder",
    weight_format: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert an SD3 IP-Adapter for the converted SD3 folder `model_dir` to OpenVINO IR in `output_dir`; return it.

    The first four arguments mean what they mean in diffusers' `load_ip_adapter` (a hub id, a local folder or file, or a
    state dict; InstantX's weights are `weight_name="ip-adapter.bin"`). `image_encoder_folder`: a folder name beside the
    weights, or the SigLIP encoder's own folder or hub id ('google/siglip-so400m-patch14-384' for InstantX's adapter);
    None converts no encoder (calls then take `ip_adapter_image_embeds`). `weight_format`: None takes `model_dir`'s. The
    adapter is checked against `model_dir`'s transformer (block count, widths, no dual-attention blocks) before anything
    is written; a folder converted from the same source with the same options is kept, another is refused unless
    `overwrite=True`.
    """
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    transformer_config = read_json(model_dir / "transformer" / CONFIG_JSON, model_dir=model_dir)
    check_no_dual_attention(transformer_config, where=model_dir / "transformer")
    weight_format = adapter_weight_format(model_dir, weight_format)
    encoder_location = image_encoder_location(pretrained_model_name_or_path_or_dict, subfolder=subfolder, image_encoder_folder=image_encoder_folder)
    source = pretrained_model_name_or_path_or_dict
    state = read_ip_adapter_state_dict(source) if isinstance(source, dict) else None  # checked, and hashed for the record
    record = {
        "kind": IP_ADAPTER_RECORD_KIND,
        "source": _source_record(source, weight_name=weight_name, subfolder=subfolder),
        "options": {
            "weight_format": weight_format,
            "image_encoder": _encoder_record(encoder_location),
            "transformer": {key: transformer_config[key] for key in ("num_layers", "num_attention_heads", "attention_head_dim")},
        },
    }
    parts = IP_ADAPTER_PARTS if encoder_location is not None else IP_ADAPTER_PARTS[1:]
    if not overwrite:
        refuse_other_conversion(output_dir, record)
        if read_conversion_record(output_dir) is not None and all(is_converted(output_dir / part) for part in parts):
            return output_dir  # converted from this source with these options (and checked against this transformer then)
    state = state or read_ip_adapter_state_dict(source, weight_name=weight_name, subfolder=subfolder)
    image_projection = build_image_projection(state["image_proj"])
    processors = build_attention_processors(state["ip_adapter"], transformer_config=transformer_config)
    encoder = load_image_encoder(encoder_location) if encoder_location is not None else None
    check_resampler_fits(image_projection, processors, image_encoder_width=encoder[0].config.hidden_size if encoder else None)
    from tqdm.auto import tqdm

    with staged_dir(output_dir) as staging, quiet_nncf(), torch.no_grad():
        progress = tqdm(parts, desc="Converting the IP-Adapter to OpenVINO", unit="part")
        for part in progress:
            progress.set_postfix_str(part)
            (staging / part).mkdir()
            _export_part(part, staging / part, weight_format=weight_format, encoder=encoder, image_projection=image_projection,
                         processors=processors, transformer_config=transformer_config)  # fmt: skip
        write_conversion_record(staging, record)
    del state, image_projection, processors, encoder
    gc.collect()
    return output_dir


def _export_part(part: str, directory: Path, *, weight_format: str, encoder, image_projection, processors, transformer_config: dict) -> None:
    """Trace and save one of `IP_ADAPTER_PARTS` into `directory`, compressed for `weight_format`."""
    if part == "image_encoder":
        model, processor = encoder
        ov_model = export_ir(_image_encoder_spec(model), submodel="ip_adapter_image_encoder", weight_format=weight_format)
        _save_part(ov_model, directory, config=model.config.to_dict(), weight_format=weight_format)
        processor.save_pretrained(directory)
    elif part == "image_projection":
        ov_model = export_ir(_image_projection_spec(image_projection), submodel="ip_adapter_image_projection", weight_format=weight_format)
        config = {
            "embed_dim": image_projection.proj_in.in_features,
            "output_dim": image_projection.proj_out.out_features,
            "hidden_dim": image_projection.proj_in.out_features,
            "num_queries": image_projection.latents.shape[1],
        }
        _save_part(ov_model, directory, config=config, weight_format=weight_format)
    else:
        heads, num_queries = transformer_config["num_attention_heads"], image_projection.latents.shape[1]
        blocks = [export_ir(_block_attention_spec(p, heads=heads, num_queries=num_queries), submodel="ip_adapter_attention", weight_format="fp32") for p in processors]
        ov_model = compress_weights(_merged_attention_model(blocks), submodel="ip_adapter_attention", weight_format=weight_format)
        ov_model.set_rt_info(weight_format, RT_INFO_WEIGHT_FORMAT)
        config = {
            "num_layers": len(processors),
            "num_attention_heads": heads,
            "attention_head_dim": transformer_config["attention_head_dim"],
            "ip_hidden_states_dim": processors[0].to_k_ip.in_features,
            "timesteps_emb_dim": processors[0].norm_ip.linear.in_features,
            "num_queries": num_queries,
        }
        _save_part(ov_model, directory, config=config, weight_format=weight_format)


__all__ = [
    "BlockImageAttention",
    "build_attention_processors",
    "build_image_projection",
    "convert_sd3_ip_adapter",
    "image_encoder_location",
    "read_ip_adapter_state_dict",
]
