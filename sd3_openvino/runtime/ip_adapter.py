"""IP-Adapter for the SD3 runtime: a converted adapter folder, its image attention in the transformer graph, the image
features of a call.

How the image attention reaches the blocks. diffusers' `SD3IPAdapterJointAttnProcessor2_0` adds, before each joint
block's output projection (`attn.to_out.0`), an attention of the block's image queries over its image keys and the
adapter's image-prompt keys, times the adapter scale. The transformer IR is left as converted (optimum-intel and
openvino.genai load the same file and give the same images); `add_ip_adapter_attention` stitches the adapter's
`attention/` IR into the loaded graph: its `query.k` / `key.k` / `value.k` inputs read block k's own projections (named
by module path at conversion, `core.layout.linear_node_name`; after their bias and any LoRA), its `ip_attention.k`
output is added to the input of block k's output projection, and its shared inputs (`ip_hidden_states`, `ip_temb`,
`ip_scale`) become inputs of the transformer. `remove_ip_adapter_attention` takes it out again, leaving LoRA and
ControlNet states in place. A pipeline with no adapter loaded runs the graph as converted: nothing extra per step.

Each call: the SigLIP image encoder runs once per image (`ImageFeatureCache`, by the image's pixels), the resampler
(`image_projection/`) once per computed step with that step's timestep, as InstantX's pipeline does (see
`ImagePrompt`).

Imports numpy, the layout and `submodels.py`; `openvino` and PIL when used.
"""

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.layout import (
    CONFIG_JSON,
    IP_ADAPTER_INPUTS,
    IP_ADAPTER_PARTS,
    IP_ADAPTER_RECORD_KIND,
    IP_ATTENTION_OUTPUT,
    OV_MODEL_XML,
    ip_attention_input_name,
    linear_node_name,
    read_conversion_record,
    read_json,
)
from .submodels import OVSubmodel

DEFAULT_IP_ADAPTER_SCALE = 0.5  # diffusers' `SD3IPAdapterJointAttnProcessor2_0` starts at 0.5
PREPROCESSOR_CONFIG = "preprocessor_config.json"
FEATURE_CACHE_SIZE = 8  # images whose features a pipeline keeps (each a few MB for SigLIP so400m: 729 x 1152 floats)
STITCH_PREFIX = "ip_adapter/"  # friendly-name prefix of the ops `add_ip_adapter_attention` adds to the transformer


def is_ip_adapter_folder(path) -> bool:
    """True when `path` is a folder written by `convert_sd3_ip_adapter`."""
    if not isinstance(path, (str, Path)) or not Path(path).is_dir():
        return False
    return (read_conversion_record(Path(path)) or {}).get("kind") == IP_ADAPTER_RECORD_KIND


# ----------------------------------------------------------------------------------------------------------
# The converted adapter
# ----------------------------------------------------------------------------------------------------------


@dataclass
class IPAdapter:
    """One converted IP-Adapter: the image encoder (None when converted without), the resampler, the config of its
    attention graph (`attention/`, read when stitched into the transformer), the encoder's preprocessing, the scale, and
    the features of recent images (shared with clones)."""

    path: Path
    image_encoder: OVSubmodel | None
    image_projection: OVSubmodel
    config: dict  # attention/config.json: num_layers, widths, num_queries
    preprocessing: dict | None
    scale: float = DEFAULT_IP_ADAPTER_SCALE
    features: "ImageFeatureCache" = field(default_factory=lambda: ImageFeatureCache(FEATURE_CACHE_SIZE))

    @property
    def embed_dim(self) -> int:
        """Width of the image features the resampler reads (the image encoder's hidden size)."""
        return self.image_projection.config["embed_dim"]

    def zero_inputs(self, batch: int) -> dict[str, np.ndarray]:
        """The transformer's adapter inputs for a call without an image prompt: scale 0 adds exactly nothing."""
        ip_hidden_states, ip_temb, ip_scale = IP_ADAPTER_INPUTS
        return {
            ip_hidden_states: np.zeros((batch, self.config["num_queries"], self.config["ip_hidden_states_dim"]), np.float32),
            ip_temb: np.zeros((batch, self.config["timesteps_emb_dim"]), np.float32),
            ip_scale: np.zeros(1, np.float32),
        }

    def clone(self) -> "IPAdapter":
        """This adapter with its own infer requests on the same compiled models, for a pipeline's clone (`clone()`)."""
        encoder = self.image_encoder.clone() if self.image_encoder is not None else None
        return IPAdapter(self.path, encoder, self.image_projection.clone(), self.config, self.preprocessing, self.scale, self.features)

    def input_shapes(self, batch: int) -> dict[str, list[int]]:
        """The adapter inputs' shapes for a transformer batch of `batch` (-1: dynamic), for static shapes."""
        return {name: [batch if index == 0 and name != IP_ADAPTER_INPUTS[2] else dim for index, dim in enumerate(value.shape)]
                for name, value in self.zero_inputs(1).items()}  # fmt: skip


def load_ip_adapter_folder(path: Path, *, core, device: str, ov_config: dict | None) -> IPAdapter:
    """The IP-Adapter folder `path` (written by `convert_sd3_ip_adapter`), read; a named error when it is incomplete."""
    missing = [part for part in IP_ADAPTER_PARTS[1:] if not (path / part / OV_MODEL_XML).is_file()]
    if missing:
        raise FileNotFoundError(
            f"`{path}` is not a complete IP-Adapter folder: it lacks {missing}. Convert the adapter again "
            "(`sd3_helper.convert_sd3_ip_adapter`, or `pipe.load_ip_adapter` with the adapter's source)."
        )
    has_encoder = (path / "image_encoder" / OV_MODEL_XML).is_file()
    image_encoder = OVSubmodel(path / "image_encoder", core=core, device=device, ov_config=ov_config) if has_encoder else None
    image_projection = OVSubmodel(path / "image_projection", core=core, device=device, ov_config=ov_config)
    config = read_json(path / "attention" / CONFIG_JSON, model_dir=path)
    preprocessing = read_json(path / "image_encoder" / PREPROCESSOR_CONFIG, model_dir=path) if has_encoder else None
    for submodel, name in ((image_encoder, "ip_image_encoder"), (image_projection, "ip_image_projection")):
        if submodel is not None:
            submodel.name = name  # its stage in the call's metrics
    return IPAdapter(path, image_encoder, image_projection, config, preprocessing)


def check_no_dual_attention(transformer_config: dict, *, where: Path) -> None:
    """Raise a ValueError for a transformer with dual-attention blocks (SD3.5 Medium), which SD3 IP-Adapters do not fit."""
    dual = list(transformer_config.get("dual_attention_layers") or ())
    if dual:
        raise ValueError(
            f"`{where}` has dual-attention blocks {dual} (SD3.5 Medium's MMDiT-X), which SD3 IP-Adapters do not fit: they "
            "have one image attention per joint block (diffusers would load them onto the wrong blocks). Use an SD3.5 "
            "Large folder with an adapter trained for it (InstantX/SD3.5-Large-IP-Adapter)."
        )


def check_ip_adapter_fits(adapter: IPAdapter, *, transformer_config: dict, where: Path) -> None:
    """Raise a ValueError naming the mismatch when `adapter` was converted for another transformer (or this one has
    dual-attention blocks)."""
    check_no_dual_attention(transformer_config, where=where)
    width = transformer_config["num_attention_heads"] * transformer_config["attention_head_dim"]
    checks = [
        ("blocks", adapter.config["num_layers"], transformer_config["num_layers"]),
        ("attention heads", adapter.config["num_attention_heads"], transformer_config["num_attention_heads"]),
        ("attention width", adapter.config["num_attention_heads"] * adapter.config["attention_head_dim"], width),
    ]
    for what, theirs, ours in checks:
        if theirs != ours:
            raise ValueError(
                f"The IP-Adapter in `{adapter.path}` was made for another transformer: it has {theirs} {what}, `{where}` has "
                f"{ours}. Use an adapter trained for this model (InstantX/SD3.5-Large-IP-Adapter for SD3.5 Large)."
            )


# ----------------------------------------------------------------------------------------------------------
# The image attention in the transformer graph
# ----------------------------------------------------------------------------------------------------------


def _projection_output(matmul):
    """A linear layer's output: its MatMul followed through the Adds that come after it (a LoRA's, the bias)."""
    node = matmul
    while True:
        consumers = [target.get_node() for target in node.output(0).get_target_inputs()]
        if len(consumers) != 1 or consumers[0].get_type_name() != "Add":
            return node.output(0)
        node = consumers[0]


def has_ip_adapter_attention(ov_model) -> bool:
    return any(IP_ADAPTER_INPUTS[0] in parameter.output(0).get_names() for parameter in ov_model.get_parameters())


def add_ip_adapter_attention(ov_model, attention_model, *, num_layers: int, where: Path) -> None:
    """Stitch the IP-Adapter's `attention_model` into the transformer graph `ov_model`, in place (see the module
    docstring); a ValueError when the graph's linear layers are not named (a transformer exported by another tool)."""
    from openvino import opset13 as ops

    matmuls = {op.get_friendly_name(): op for op in ov_model.get_ops() if op.get_type_name() == "MatMul"}
    layers = {(index, name): f"transformer_blocks.{index}.attn.{name}" for index in range(num_layers) for name in ("to_q", "to_k", "to_v", "to_out.0")}
    missing = [path for path in layers.values() if linear_node_name(path) not in matmuls]
    if missing:
        raise ValueError(
            f"`{where}` has no layer named `{linear_node_name(missing[0])}`, so an IP-Adapter's image attention cannot be added "
            "to its blocks (a transformer converted by another tool or an older version). Convert the folder with "
            "`convert_sd3`."
        )
    inputs = {parameter.output(0).get_any_name(): parameter for parameter in attention_model.get_parameters()}
    for index in range(num_layers):
        for projection, layer in (("query", "to_q"), ("key", "to_k"), ("value", "to_v")):
            source = _projection_output(matmuls[linear_node_name(layers[index, layer])])
            for target in list(inputs[ip_attention_input_name(projection, index)].output(0).get_target_inputs()):
                target.replace_source_output(source)
        out_projection = matmuls[linear_node_name(layers[index, "to_out.0"])]
        attended = out_projection.input_value(0)
        result = next(r for r in attention_model.get_results() if f"{IP_ATTENTION_OUTPUT}.{index}" in r.output(0).get_names())
        consumers = list(attended.get_target_inputs())  # the output projection, and a LoRA's down projection if any
        with_image = ops.add(attended, result.input_value(0))
        with_image.set_friendly_name(f"{STITCH_PREFIX}transformer_blocks.{index}")
        for target in consumers:
            target.replace_source_output(with_image.output(0))
    ov_model.add_parameters([inputs[name] for name in IP_ADAPTER_INPUTS])
    ov_model.validate_nodes_and_infer_types()


def remove_ip_adapter_attention(ov_model) -> None:
    """Take the image attention of `add_ip_adapter_attention` out of `ov_model` again, in place."""
    for op in ov_model.get_ops():
        if op.get_type_name() == "Add" and op.get_friendly_name().startswith(STITCH_PREFIX):
            for target in list(op.output(0).get_target_inputs()):
                target.replace_source_output(op.input_value(0))
    for parameter in list(ov_model.get_parameters()):
        if parameter.output(0).get_any_name() in IP_ADAPTER_INPUTS:
            ov_model.remove_parameter(parameter)
    ov_model.validate_nodes_and_infer_types()


# ----------------------------------------------------------------------------------------------------------
# Image features
# ----------------------------------------------------------------------------------------------------------


def preprocess_ip_image(image, *, preprocessing: dict) -> np.ndarray:
    """One PIL image (or HxWx3 uint8 array) -> (3, H, W) float32 pixel values as the image encoder's processor makes them
    (transformers' `SiglipImageProcessor`, PIL backend: RGB, bicubic resize, rescale, normalize)."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if preprocessing.get("do_convert_rgb", True):
        image = image.convert("RGB")
    if preprocessing.get("do_resize", True):
        size = preprocessing["size"]
        image = image.resize((size["width"], size["height"]), resample=Image.Resampling(preprocessing.get("resample", 3)))
    pixels = np.asarray(image, dtype=np.float32)
    if preprocessing.get("do_rescale", True):
        pixels = pixels * np.float32(preprocessing.get("rescale_factor", 1 / 255))
    if preprocessing.get("do_normalize", True):
        pixels = (pixels - np.asarray(preprocessing["image_mean"], np.float32)) / np.asarray(preprocessing["image_std"], np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))  # (3, H, W)


class ImageFeatureCache:
    """The image encoder's features of the last `size` images, by a digest of their pixel values: an image used for
    several prompts, calls or scales is encoded once."""

    def __init__(self, size: int):
        self.size, self.entries = size, OrderedDict()
        self.hits = self.misses = 0

    def get(self, pixels: np.ndarray, encode) -> np.ndarray:
        """The features of `pixels` (3, H, W): from the cache, or `encode(pixels[None])[0]`, kept."""
        key = hashlib.sha1(pixels.tobytes()).hexdigest()
        if key in self.entries:
            self.hits += 1
            self.entries.move_to_end(key)
            return self.entries[key]
        self.misses += 1
        features = encode(pixels[None])[0]
        self.entries[key] = features
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return features


# ----------------------------------------------------------------------------------------------------------
# One call's image prompt
# ----------------------------------------------------------------------------------------------------------


def check_ip_adapter_scale(scale) -> float:
    """`scale` as a float; a TypeError or ValueError naming it when it is not a finite number."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)):
        raise TypeError(f"`scale` has to be a float (0 ignores the image prompt, 1 is the adapter's full weight) but is {scale!r}.")
    if not math.isfinite(float(scale)):
        raise ValueError(f"`scale` has to be a finite number (0 ignores the image prompt, 1 is the adapter's full weight) but is {scale!r}.")
    return float(scale)


@dataclass
class ImagePrompt:
    """The image prompt of one call: `image_embeds` (transformer batch, tokens, width), in the transformer batch's
    order ([negative, positive] halves under guidance), and the adapter's scale. `inputs` runs the resampler for a step."""

    adapter: IPAdapter
    image_embeds: np.ndarray
    scale: float

    def inputs(self, *, timestep: np.float32, run_submodel, positive_only: bool = False) -> dict[str, np.ndarray]:
        """The transformer's adapter inputs at `timestep` (the resampler run for it); `positive_only`: for the positive
        half of a guided batch (skip-layer guidance's pass)."""
        embeds = self.image_embeds[len(self.image_embeds) // 2 :] if positive_only else self.image_embeds
        if self.scale == 0.0:
            return self.adapter.zero_inputs(len(embeds))
        ip_hidden_states, ip_temb, ip_scale = IP_ADAPTER_INPUTS
        outputs = run_submodel(self.adapter.image_projection, image_embeds=embeds, timestep=np.full(len(embeds), timestep, dtype=np.float32))
        return {ip_hidden_states: outputs[ip_hidden_states], ip_temb: outputs[ip_temb], ip_scale: np.array([self.scale], np.float32)}
