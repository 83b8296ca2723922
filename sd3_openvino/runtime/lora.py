"""LoRA adapters: reading them as diffusers does, and switching them at run time on the OpenVINO submodels.

Run time (`LoraAdapters`, behind the pipelines' `load_lora_weights` / `set_adapters` / ...): each linear layer a
loaded LoRA touches gets three OpenVINO states beside its MatMul, found by the module path in its name
(`sd3_layout.linear_node_name`): A (rank, in), alpha (1, rank) and B (out, rank). Its output becomes

    x W^T + ((x A^T) * alpha) B^T

which is the pattern OpenVINO's CPU plugin runs as one LoRA node (a layer without an active adapter holds rank-1
zeros: see `stacked_states`). The active
adapters are stacked along the rank, and alpha holds each one's peft scaling times its adapter weight, so
`set_adapters`, `disable_lora` and `enable_lora` only write states: nothing is converted or compiled again. A
model without adapters keeps its original graph, so its speed is unchanged.

Reading (`read_lora_state_dict`, `read_lora_layers`): diffusers' `lora_state_dict` reads the file and normalises
the formats it knows (peft keys, diffusers' older `lora.down` / `lora.up` keys); diffusers' own SD3 loaders then put the LoRA into empty (meta-device)
models made from the folder's configs, which gives peft's target layers and scalings (rank and alpha patterns,
rsLoRA) exactly as diffusers applies them. The A and B matrices are the normalised state dict's.

Imports the layout; torch, diffusers, transformers and peft only inside the functions that read LoRA files.
"""

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.layout import CONFIG_JSON, is_hub_id, linear_node_name, read_model_index
from .lora_formats import LORA_FORMATS, community_lora_format, convert_community_lora

LORA_COMPONENTS = ("transformer", "text_encoder", "text_encoder_2")  # what diffusers' SD3 LoRA loader fills
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' file name in a LoRA folder
LORA_BIN_WEIGHT_NAME = "pytorch_lora_weights.bin"  # the file name diffusers wrote before safetensors
LORA_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")  # a source ending so names a file, not a hub id
MAX_ADAPTER_WEIGHT = 100.0  # |adapter weight| beyond it overflows the activations (NaN images); typical: -2..2
PROBE_ADAPTER = "probe"  # the adapter name used while reading a LoRA's layers from empty models


# ----------------------------------------------------------------------------------------------------------
# Reading LoRA files
# ----------------------------------------------------------------------------------------------------------


def describe_source(source) -> str:
    return "(a state dict)" if isinstance(source, dict) else repr(str(source))


def lora_file_in(folder: Path, *, argument: str) -> Path:
    """The LoRA file in `folder`: diffusers' `pytorch_lora_weights.safetensors`, else the one `.safetensors` file it
    holds (else diffusers' older `pytorch_lora_weights.bin`). A named error when it holds none, or several."""
    if (folder / LORA_WEIGHT_NAME).is_file():
        return folder / LORA_WEIGHT_NAME
    candidates = sorted(path for path in folder.glob("*.safetensors") if path.is_file())
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        names = ", ".join(path.name for path in candidates[:5])
        raise ValueError(
            f"{argument} {str(folder)!r} holds {len(candidates)} `.safetensors` files ({names}) and no {LORA_WEIGHT_NAME}; "
            f"pass the LoRA file itself, e.g. {str(candidates[0])!r}."
        )
    if (folder / LORA_BIN_WEIGHT_NAME).is_file():
        return folder / LORA_BIN_WEIGHT_NAME
    raise FileNotFoundError(
        f"{argument} {str(folder)!r} is a folder without a LoRA file (no `.safetensors` file in it). Pass the LoRA "
        f"file itself, or the folder diffusers saved it in (it holds {LORA_WEIGHT_NAME})."
    )


def lora_source(source, *, argument: str = "LoRA") -> dict | Path | str:
    """What a LoRA `source` names, found without network access: a state dict as it is, a local file as its `Path`
    (a folder as the LoRA file it holds: see `lora_file_in`), or a hub id (`namespace/name`) as it is.

    A source that looks like a path (a `Path`, a file suffix such as `.safetensors`, or anything but `namespace/name`)
    and does not exist is a FileNotFoundError at once, not a hub request; a source of another type is a TypeError.
    `argument` names the source in messages."""
    if isinstance(source, dict):
        return source
    if not isinstance(source, (str, Path)):
        raise TypeError(
            f"{argument} has to be a LoRA file or folder (str or Path), a hub id (namespace/name) or a state dict, but is "
            f"{type(source).__name__}: {source!r}."
        )
    if isinstance(source, str) and not source.strip():
        raise ValueError(f"{argument} has to name a LoRA file, its folder or a hub id (namespace/name) but is {source!r}.")
    path = Path(source).expanduser()
    if path.is_dir():
        return lora_file_in(path, argument=argument)
    if path.exists():
        return path
    if is_hub_id(source) and path.suffix.lower() not in LORA_SUFFIXES:
        return source
    raise FileNotFoundError(
        f"{argument} {str(source)!r} does not exist. Pass a LoRA `.safetensors` file, its folder or a hub id (namespace/name)."
    )


def read_lora_state_dict(source: str | Path | dict, *, transformer_layers: int | None = None) -> tuple[dict, dict | None]:
    """A LoRA's state dict (peft key names) and its metadata, read by diffusers' `lora_state_dict`, which
    normalises the formats it knows; Kohya and ComfyUI / original-key LoRAs are converted first (see
    `lora_formats.py`; `transformer_layers`, the transformer's block count, tells which block is the last). `source`
    is a file, a folder holding its LoRA file (see `lora_file_in`), a hub id or a state dict; a local file is read
    whatever the hub settings (`HF_HUB_OFFLINE=1` too). A missing path is a FileNotFoundError (see `lora_source`); a
    ValueError names `source` when it is no LoRA for SD3, listing the formats read."""
    resolved = lora_source(source)
    from diffusers import StableDiffusion3Pipeline

    described = describe_source(source)
    community = read_community_lora(resolved, transformer_layers=transformer_layers, source=described)
    if community is not None:
        resolved = community
    if isinstance(resolved, Path):  # folder and file name: diffusers looks for nothing else (offline mode refuses to guess)
        location = {"pretrained_model_name_or_path_or_dict": str(resolved.parent), "weight_name": resolved.name}
    else:
        location = {"pretrained_model_name_or_path_or_dict": dict(resolved) if isinstance(resolved, dict) else resolved}
    try:
        state_dict, metadata = StableDiffusion3Pipeline.lora_state_dict(**location, return_lora_metadata=True)
    except Exception as error:  # a damaged file, a hub id without network (httpx errors), a non-LoRA dict
        reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}" if str(error).strip() else type(error).__name__
        raise ValueError(f"LoRA {described} could not be read ({reason}). Pass a LoRA `.safetensors` file or its folder in one of the formats: {'; '.join(LORA_FORMATS)}.") from error
    if not state_dict:
        raise ValueError(f"{described} is not a LoRA: it holds no tensors.")
    not_lora = next((key for key in state_dict if "lora" not in key), None)
    if not_lora is not None:
        raise ValueError(f"{described} is not a LoRA: its tensor names must all contain 'lora', but it holds {not_lora!r}.")
    prefixes = sorted({key.split(".")[0] for key in state_dict})
    if not set(prefixes) & set(LORA_COMPONENTS):
        raise ValueError(
            f"LoRA {described} has no weights for SD3: its tensors start with {prefixes[:5]}, none with {list(LORA_COMPONENTS)}. "
            f"Is it a LoRA for another model? The formats read: {'; '.join(LORA_FORMATS)}."
        )
    return state_dict, metadata


def read_community_lora(resolved: dict | Path | str, *, transformer_layers: int | None, source: str) -> dict | None:
    """A Kohya or ComfyUI / original-key LoRA (a local `.safetensors` file or a state dict) as a peft state dict
    (`lora_formats.convert_community_lora`); None for any other source, which diffusers reads as it is."""
    if isinstance(resolved, dict):
        state_dict = resolved
        if community_lora_format(state_dict) is None:
            return None
    elif isinstance(resolved, Path) and resolved.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(resolved), framework="pt") as file:
                if community_lora_format(file.keys()) is None:
                    return None
                state_dict = {key: file.get_tensor(key) for key in file.keys()}
        except Exception:  # a damaged file: diffusers' reader names the problem
            return None
    else:
        return None
    lora_format = community_lora_format(state_dict)
    return convert_community_lora(state_dict, lora_format=lora_format, transformer_layers=transformer_layers, source=source)


def check_scale(scale, *, name: str) -> float:
    """`scale` as a float; a ValueError names `name` unless it is a finite number within +-`MAX_ADAPTER_WEIGHT`
    (negative scales are valid, as in diffusers)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)) or not math.isfinite(scale):
        raise ValueError(f"{name} has to be a finite number (negative values are valid) but is {scale!r}.")
    if abs(scale) > MAX_ADAPTER_WEIGHT:
        raise ValueError(
            f"{name} has to be between -{MAX_ADAPTER_WEIGHT:g} and {MAX_ADAPTER_WEIGHT:g} but is {float(scale):g}: adapter weights "
            f"beyond +-{MAX_ADAPTER_WEIGHT:g} overflow the model's activations; typical values are -2..2."
        )
    return float(scale)


def check_lora(lora: list[tuple[str | Path, float]] | None, *, argument: str = "LoRA") -> list[tuple[str, float]]:
    """`lora` as `[(source, scale), ...]` with float scales checked by `check_scale`, and each local source checked
    by `lora_source` (a path that does not exist fails here, before any model loads; hub ids are not looked up).
    `argument` names a source in messages (`--lora` on the command line)."""
    if not isinstance(lora, (list, tuple, type(None))):
        raise TypeError(f"`lora` has to be a list of (path, scale) pairs but is {type(lora).__name__}: {lora!r}.")
    checked = []
    for entry in lora or []:
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2):
            raise TypeError(f"`lora` has to be a list of (path, scale) pairs but holds {entry!r}.")
        source, scale = entry
        scale = check_scale(scale, name=f"The scale of LoRA {str(source)!r} in `lora`")
        if not isinstance(source, (str, Path)):  # a state dict has no name for the conversion record
            raise TypeError(f"`lora` has to hold LoRA paths or hub ids (str or Path) but holds {type(source).__name__}: {source!r}.")
        lora_source(source, argument=argument)
        checked.append((str(Path(source).expanduser()) if str(source).startswith("~") else str(source), scale))
    return checked


@dataclass(frozen=True)
class LoraLayer:
    """One linear layer's LoRA: `down` (A, rank x in), `up` (B, out x rank) and peft's `scaling` (lora_alpha / rank,
    or its rank/alpha pattern, or rsLoRA's lora_alpha / sqrt(rank)). The layer adds `scaling * x A^T B^T`."""

    down: np.ndarray
    up: np.ndarray
    scaling: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]


def peft_state_dict(state_dict: dict, *, component: str) -> dict:
    """`component`'s part of a `lora_state_dict` result, keyed as peft keys it (`<module path>.lora_A.weight`):
    the conversions diffusers' `load_lora_adapter` (transformer) and text-encoder loader make before loading."""
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft, convert_unet_state_dict_to_peft

    prefix = f"{component}."
    weights = {key.removeprefix(prefix): value for key, value in state_dict.items() if key.startswith(prefix)}
    if component == "transformer":
        return weights if "lora_A" in next(iter(weights)) else convert_unet_state_dict_to_peft(weights)
    return convert_state_dict_to_peft(convert_state_dict_to_diffusers(weights))


def empty_model(model_dir: Path, *, component: str, model_index: dict):
    """`component`'s PyTorch model (the class `model_index.json` names), made from the folder's `config.json` on
    the meta device: its layer names and shapes, no weights."""
    import importlib

    from accelerate import init_empty_weights

    library, class_name = model_index[component]
    model_class = getattr(importlib.import_module(library), class_name)
    config_dir = model_dir / component
    with init_empty_weights():
        if library == "diffusers":
            return model_class.from_config(model_class.load_config(str(config_dir)))
        return model_class(model_class.config_class.from_json_file(str(config_dir / CONFIG_JSON)))


def inject_lora(model, state_dict: dict, metadata: dict | None, *, component: str) -> None:
    """Put the LoRA into `model` with diffusers' SD3 loaders under the adapter name `PROBE_ADAPTER` (their weights
    stay on the meta device; what counts are the layers and scalings peft gives them)."""
    import logging

    from diffusers import StableDiffusion3Pipeline
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # transformers reports every meta weight as "missing"
    diffusers_logger = logging.getLogger("diffusers")
    level = diffusers_logger.level
    diffusers_logger.setLevel(logging.ERROR)
    try:
        if component == "transformer":
            StableDiffusion3Pipeline.load_lora_into_transformer(
                state_dict, transformer=model, adapter_name=PROBE_ADAPTER, metadata=metadata, low_cpu_mem_usage=True
            )
        else:
            StableDiffusion3Pipeline.load_lora_into_text_encoder(
                state_dict, network_alphas=None, text_encoder=model, prefix=component, adapter_name=PROBE_ADAPTER,
                metadata=metadata, low_cpu_mem_usage=True,
            )
    finally:
        transformers_logging.set_verbosity(verbosity)
        diffusers_logger.setLevel(level)


def transformer_layer_count(model_dir: Path) -> int | None:
    """The number of blocks of the folder's transformer (its `config.json`'s `num_layers`), None without one."""
    import json

    config_path = model_dir / "transformer" / CONFIG_JSON
    return json.loads(config_path.read_text(encoding="utf-8")).get("num_layers") if config_path.is_file() else None


def read_lora_layers(source: str | Path | dict, *, model_dir: str | Path) -> dict[str, dict[str, LoraLayer]]:
    """`{component: {module path: LoraLayer}}` of the LoRA at `source`, for the SD3 folder `model_dir` (its
    configs give the layers). A ValueError says when the LoRA is unreadable, matches no layer of the model, holds
    layers of another size, or uses what run-time adapters do not support (DoRA, LoRA biases)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    model_dir = Path(model_dir)
    model_index = read_model_index(model_dir)
    state_dict, metadata = read_lora_state_dict(source, transformer_layers=transformer_layer_count(model_dir))
    layers = {}
    for component in LORA_COMPONENTS:
        if not any(key.startswith(f"{component}.") for key in state_dict):
            continue
        if not isinstance(model_index.get(component), list) or not (model_dir / component / CONFIG_JSON).is_file():
            raise ValueError(f"LoRA {describe_source(source)} has weights for `{component}`, which `{model_dir}` does not have.")
        model = empty_model(model_dir, component=component, model_index=model_index)
        try:
            inject_lora(model, state_dict, metadata, component=component)
        except (ValueError, RuntimeError, KeyError) as error:
            raise ValueError(f"LoRA {describe_source(source)} does not fit `{model_dir / component}`: {str(error).strip()[:300]}") from error
        weights = peft_state_dict(state_dict, component=component)
        layers[component] = {path: lora_layer(layer, weights, path=path, source=source) for path, layer in model.named_modules() if isinstance(layer, BaseTunerLayer)}
    if not any(layers.values()):
        unmatched = next(key for key in state_dict if key.split(".")[0] in LORA_COMPONENTS)
        raise ValueError(
            f"LoRA {describe_source(source)} matches no layer of `{model_dir}`: its layer names are not the SD3 "
            f"transformer's or CLIP encoders' (e.g. {unmatched!r}). Is it a LoRA for another model?"
        )
    return {component: component_layers for component, component_layers in layers.items() if component_layers}


def lora_layer(layer, weights: dict, *, path: str, source) -> LoraLayer:
    """The `LoraLayer` of one peft layer that diffusers' loader made, with A and B from the LoRA's `weights`."""
    if layer.use_dora.get(PROBE_ADAPTER) or f"{path}.lora_B.bias" in weights:
        kind = "DoRA" if layer.use_dora.get(PROBE_ADAPTER) else "a LoRA bias"
        raise ValueError(
            f"LoRA {describe_source(source)} uses {kind} on `{path}`, which run-time adapters do not support; fuse it at "
            "conversion instead (`convert_sd3(..., lora=[(path, scale)])`)."
        )
    down, up = (weights.get(f"{path}.lora_{part}.weight") for part in "AB")
    expected_down, expected_up = (tuple(getattr(layer, f"lora_{part}")[PROBE_ADAPTER].weight.shape) for part in "AB")
    if down is None or up is None or tuple(down.shape) != expected_down or tuple(up.shape) != expected_up:
        raise ValueError(f"LoRA {describe_source(source)} has no A/B weights of shapes {expected_down}/{expected_up} for `{path}`.")
    as_numpy = lambda tensor: np.ascontiguousarray(tensor.detach().float().cpu().numpy())  # noqa: E731
    return LoraLayer(down=as_numpy(down), up=as_numpy(up), scaling=float(layer.scaling[PROBE_ADAPTER]))


# ----------------------------------------------------------------------------------------------------------
# LoRA states in an OpenVINO model
# ----------------------------------------------------------------------------------------------------------


def lora_state_names(module_path: str) -> tuple[str, str, str]:
    """The names of the A, alpha and B states of the layer at `module_path`."""
    return tuple(f"lora/{module_path}/{part}" for part in ("A", "alpha", "B"))


def lora_module_paths(ov_model) -> set[str]:
    """The module paths of the layers of `ov_model` that have LoRA states."""
    return {variable.get_info().variable_id.split("/", 1)[1].rsplit("/", 1)[0] for variable in ov_model.get_variables() if variable.get_info().variable_id.startswith("lora/")}


def add_lora_states(ov_model, module_paths: list[str], *, where: Path) -> None:
    """Give each linear layer of `ov_model` at `module_paths` LoRA states (see the module docstring), in place.

    Raises a ValueError when a layer is not found by its name, as in a folder converted before linear layers were
    named by module path: then convert it again, or fuse the LoRA at conversion."""
    import openvino as ov
    from openvino import opset13 as ops
    from openvino.op.util import Variable, VariableInfo

    matmuls = {op.get_friendly_name(): op for op in ov_model.get_ops() if op.get_type_name() == "MatMul"}
    missing = [path for path in module_paths if linear_node_name(path) not in matmuls]
    if missing:
        raise ValueError(
            f"`{where}` has no layer named `{linear_node_name(missing[0])}` ({len(missing)} of the adapter's {len(module_paths)} "
            "layers are missing), so a LoRA cannot be applied at run time. Convert the folder again with this version "
            "(`convert_sd3`), or fuse the LoRA at conversion (`convert_sd3(..., lora=[(path, scale)])`)."
        )
    variables, sinks = [], []
    for path in module_paths:
        matmul = matmuls[linear_node_name(path)]
        in_features, out_features = matmul.get_input_partial_shape(0)[-1], matmul.get_output_partial_shape(0)[-1]
        shapes = ([-1, in_features], [1, -1], [out_features, -1])
        reads = []
        for name, shape in zip(lora_state_names(path), shapes):
            info = VariableInfo()
            info.data_shape, info.data_type, info.variable_id = ov.PartialShape(shape), ov.Type.f32, name
            variable = Variable(info)
            reads.append(ops.read_value(variable))
            variables.append(variable)
            sinks.append(ops.assign(reads[-1], variable))
        down, alpha, up = reads
        consumers = list(matmul.output(0).get_target_inputs())
        low_rank = ops.multiply(ops.matmul(matmul.input_value(0), down, False, True), alpha)
        with_lora = ops.add(matmul, ops.matmul(low_rank, up, False, True))
        for consumer in consumers:
            consumer.replace_source_output(with_lora.output(0))
    ov_model.add_variables(variables)
    ov_model.add_sinks(sinks)
    ov_model.validate_nodes_and_infer_types()


def stacked_states(module_path: str, layers: list[tuple[LoraLayer, float]], *, features: tuple[int, int]) -> dict[str, np.ndarray]:
    """The A, alpha and B states of one layer (`features`: in, out) that applies each `(layer, weight)` of `layers`
    at once: A and B stacked along the rank, alpha = scaling x weight for each adapter's ranks.

    Without layers: rank-1 zeros, which add exactly 0. Not empty states: on OpenVINO 2026.4's CPU plugin in bf16, a
    LoRA state emptied after it held values gives wrong outputs once it holds values again."""
    names = lora_state_names(module_path)
    if not layers:
        in_features, out_features = features
        zeros = (np.zeros((1, in_features), np.float32), np.zeros((1, 1), np.float32), np.zeros((out_features, 1), np.float32))
        return dict(zip(names, zeros))
    down = np.concatenate([layer.down for layer, _ in layers], axis=0)
    alpha = np.concatenate([np.full(layer.rank, layer.scaling * weight, dtype=np.float32) for layer, weight in layers])[None, :]
    up = np.concatenate([layer.up for layer, _ in layers], axis=1)
    return dict(zip(names, (down, alpha, up)))


# ----------------------------------------------------------------------------------------------------------
# The adapters of one pipeline
# ----------------------------------------------------------------------------------------------------------


@dataclass
class LoraAdapters:
    """The LoRA adapters loaded into a pipeline's submodels, with diffusers' semantics:

    - loading an adapter makes it the only active one in each component it has weights for, at weight 1;
    - `set_adapters(names, weights)` activates `names` in every component (each where it has weights), each at its
      weight (a float, or a dict by component, unnamed components at 1);
    - `disable` / `enable` switch all of them off and on again, keeping the choice;
    - `delete` / `unload` remove adapters (`unload` all of them, giving the model's original graph back).

    `submodels` are the pipeline's `sd3_submodels.OVSubmodel`s by name; states are written through their `set_states`.
    """

    submodels: dict
    model_dir: Path
    layers: dict[str, dict[str, dict[str, LoraLayer]]] = field(default_factory=dict)  # adapter -> component -> path -> layer
    active: dict[str, list[str]] = field(default_factory=dict)  # component -> active adapters
    weights: dict[str, dict[str, float]] = field(default_factory=dict)  # adapter -> component -> weight
    features: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)  # (component, path) -> (in, out)
    enabled: bool = True

    @property
    def names(self) -> list[str]:
        return list(self.layers)

    def copy_for(self, submodels: dict) -> "LoraAdapters":
        """The same adapters (their layers shared, read-only) with their own choice and weights, writing the states of
        `submodels` (a clone's, see `OVStableDiffusion3Pipeline.clone`)."""
        return LoraAdapters(
            submodels=submodels,
            model_dir=self.model_dir,
            layers=dict(self.layers),
            active={component: list(names) for component, names in self.active.items()},
            weights={name: dict(weights) for name, weights in self.weights.items()},
            features=dict(self.features),
            enabled=self.enabled,
        )

    def components(self) -> list[str]:
        """The components with at least one adapter loaded, in diffusers' order."""
        return [component for component in LORA_COMPONENTS if any(component in layers for layers in self.layers.values())]

    def load(self, source: str | Path | dict, *, adapter_name: str | None = None) -> str:
        """Read the LoRA at `source`, give the layers it touches LoRA states (compiling those submodels again, once)
        and make it the active adapter; returns its name (`default_<n>` by default, as diffusers names them)."""
        lora_source(source, argument="`pretrained_model_name_or_path_or_dict`")  # a missing path fails here, offline
        if adapter_name is None:
            adapter_name = next(f"default_{index}" for index in range(len(self.layers) + 1) if f"default_{index}" not in self.layers)
        if not isinstance(adapter_name, str) or not adapter_name:
            raise TypeError(f"`adapter_name` has to be a non-empty string or None but is {adapter_name!r}.")
        if adapter_name in self.layers:
            raise ValueError(f"Adapter name {adapter_name!r} is already in use; pass another `adapter_name`, or `delete_adapters({adapter_name!r})` first.")
        layers = read_lora_layers(source, model_dir=self.model_dir)
        for component, component_layers in layers.items():
            submodel = self.submodels.get(component)
            if submodel is None:
                raise ValueError(f"LoRA {describe_source(source)} has weights for `{component}`, which this pipeline does not load.")
            new_paths = sorted(set(component_layers) - lora_module_paths(submodel.model))
            if new_paths:
                submodel.check_unshared("Loading a LoRA adapter for new layers")
                add_lora_states(submodel.model, new_paths, where=self.model_dir / component)
                submodel.release()  # compiled again on next use, with its states
        self.layers[adapter_name] = layers
        self.weights[adapter_name] = dict.fromkeys(layers, 1.0)
        for component, component_layers in layers.items():
            for path, layer in component_layers.items():
                self.features[component, path] = (layer.down.shape[1], layer.up.shape[0])
        for component in layers:
            self.active[component] = [adapter_name]
        self.write_states()
        return adapter_name

    def check_names(self, adapter_names: list[str]) -> None:
        unknown = [name for name in adapter_names if name not in self.layers]
        if unknown:
            raise ValueError(f"Adapter {unknown[0]!r} is not loaded; loaded adapters: {self.names}. Load it with `load_lora_weights(path, adapter_name={unknown[0]!r})`.")

    def set_adapters(self, adapter_names: str | list[str], adapter_weights=None) -> None:
        """Activate `adapter_names` with `adapter_weights` (None: 1 each; a number or a dict by component for all;
        or a list, one per name), as diffusers' `set_adapters`."""
        names = [adapter_names] if isinstance(adapter_names, str) else adapter_names
        if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) for name in names):
            raise TypeError(f"`adapter_names` has to be a string or a list of strings but is {adapter_names!r}.")
        self.check_names(list(names))
        if not isinstance(adapter_weights, (list, tuple)):
            adapter_weights = [adapter_weights] * len(names)
        if len(adapter_weights) != len(names):
            raise ValueError(
                f"`adapter_weights` has {len(adapter_weights)} entries for {len(names)} `adapter_names` {list(names)}; pass one weight per adapter."
            )
        weights = {name: self.component_weights(name, weight) for name, weight in zip(names, adapter_weights)}
        self.weights.update(weights)
        for component in self.components():
            self.active[component] = [name for name in names if component in self.layers[name]]
        self.write_states()

    def component_weights(self, name: str, weight) -> dict[str, float]:
        """An adapter weight (None, a number, or a dict by component) as `{component: weight}`."""
        if weight is None:
            weight = 1.0
        if isinstance(weight, dict):
            unknown = sorted(set(weight) - set(LORA_COMPONENTS))
            if unknown:
                raise ValueError(f"The weight of adapter {name!r} names {unknown}; components with adapters are {list(LORA_COMPONENTS)}.")
            return {component: check_scale(weight.get(component, 1.0), name=f"The weight of adapter {name!r} for {component}") for component in self.layers[name]}
        weight = check_scale(weight, name=f"The weight of adapter {name!r} in `adapter_weights`")
        return dict.fromkeys(self.layers[name], weight)

    def active_adapters(self) -> list[str]:
        """The active adapters of the transformer (of the first text encoder with adapters when it has none)."""
        components = self.components()
        return list(self.active.get(components[0], [])) if components else []

    def list_adapters(self) -> dict[str, list[str]]:
        """`{component: loaded adapter names}`, as diffusers' `get_list_adapters`."""
        return {component: [name for name, layers in self.layers.items() if component in layers] for component in self.components()}

    def delete(self, adapter_names: str | list[str]) -> None:
        """Remove the named adapters (the layers keep their states, at zero, until `unload`)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        self.check_names(names)
        for name in names:
            del self.layers[name], self.weights[name]
        self.active = {component: [name for name in active if name not in names] for component, active in self.active.items()}
        self.write_states()

    def unload(self) -> None:
        """Remove every adapter and give the submodels that had LoRA states their original graphs back."""
        for component in LORA_COMPONENTS:
            submodel = self.submodels.get(component)
            if submodel is not None and lora_module_paths(submodel.model):
                submodel.reload()
        self.layers, self.active, self.weights, self.features = {}, {}, {}, {}

    def signature(self, component: str) -> tuple:
        """What the adapters add to `component` now, as a hashable value: `((name, weight), ...)` of its active
        adapters, empty when they are off or it has none (keys of the prompt cache)."""
        if not self.enabled:
            return ()
        return tuple((name, self.weights[name][component]) for name in self.active.get(component, []) if component in self.layers[name])

    def write_states(self) -> None:
        """Write the states of every layer with LoRA states: the active adapters stacked, or zeros."""
        for component in LORA_COMPONENTS:
            submodel = self.submodels.get(component)
            if submodel is None:
                continue
            states = {}
            for path in sorted(lora_module_paths(submodel.model)):
                active = self.active.get(component, []) if self.enabled else []
                layers = [(self.layers[name][component][path], self.weights[name][component]) for name in active if path in self.layers[name].get(component, {})]
                states.update(stacked_states(path, layers, features=self.features[component, path]))
            if states:
                submodel.set_states(states)


def lora_argument(text: str) -> tuple[str, float]:
    """`PATH[:SCALE]` from the command line as `(path, scale)`; the scale defaults to 1.0."""
    path, separator, scale = text.rpartition(":")
    if not separator or not path:
        return text, 1.0
    try:
        return path, float(scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lora {text!r}: SCALE after the last ':' has to be a number, e.g. my_lora.safetensors:0.8") from None


def load_adapters(pipe, lora: list[tuple[str, float]]) -> None:
    """Load each `(path, scale)` of `lora` into `pipe` (adapters `lora_0`, `lora_1`, ...) and make them all active at
    their scales."""
    names = [f"lora_{index}" for index in range(len(lora))]
    for name, (source, _) in zip(names, lora):
        pipe.load_lora_weights(source, adapter_name=name)
    if names:
        pipe.set_adapters(names, [scale for _, scale in lora])
