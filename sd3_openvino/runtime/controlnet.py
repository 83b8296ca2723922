"""ControlNet for the SD3 runtime: the transformer's residual states, the converted ControlNets, each step's residuals.

How the residuals reach the transformer. diffusers' `SD3Transformer2DModel.forward` adds ControlNet residual
`int(index / interval)` after each block but the last (`interval = blocks / ControlNet blocks`). The transformer IR is
left as converted (optimum-intel and openvino.genai load the same file and give the same images); when a ControlNet
pipeline is made, `add_controlnet_states` gives the loaded graph one OpenVINO state per block, added after the block's
image stream (`core.layout.block_output_name`), that starts at zeros of shape (1, 1, width): a call that sets no state
adds 0. A ControlNet step sets the states for one inference (`OVSubmodel.call_with_states`); the graph is compiled once
and serves plain and ControlNet calls alike, so `from_pipe` keeps one compiled transformer.

`ControlNetResiduals` is one call's ControlNet work: the encoded control images, the scales of each step (the guidance
window), the text each ControlNet reads, and the residuals of the last step (skip-layer guidance reuses them).

Imports numpy, the layout and `submodels.py`; `openvino` when the graph is changed.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.layout import CONTROLNET_OUTPUT, block_output_name, controlnet_state_name
from .submodels import OVSubmodel


def controlnet_state_names(num_layers: int) -> list[str]:
    """The residual states of a transformer with `num_layers` blocks: one per block but the last (which diffusers'
    transformer gives no residual: its `context_pre_only` block)."""
    return [controlnet_state_name(index) for index in range(num_layers - 1)]


def find_block_outputs(ov_model, *, num_layers: int, where: Path) -> list:
    """The ops that give each block's image stream (after its skip gate), in block order.

    By name (`block_output_name`, set at conversion since ControlNet support); in a folder converted before that, by the
    gates' structure: each block selects between its output and its input (`Select(run, output, input)`), so the image
    stream's gates form a chain of `num_layers` Selects, each reading the previous one as its input (the text stream's
    chain is one shorter: the last block returns no text). Raises a ValueError for a graph without the gates (an
    export of another tool): then convert the folder with `convert_sd3`."""
    selects = [op for op in ov_model.get_ops() if op.get_type_name() == "Select"]
    by_name = {op.get_friendly_name(): op for op in selects}
    if all(block_output_name(index) in by_name for index in range(num_layers)):
        return [by_name[block_output_name(index)] for index in range(num_layers)]
    previous = {}  # id of a Select -> the Select it reads as its input (the block's input), if any
    for op in selects:
        source = op.input_value(2).get_node()
        if source.get_type_name() == "Select":
            previous[id(op)] = source
    read_as_input = {id(source) for source in previous.values()}
    chains = []
    for end in (op for op in selects if id(op) not in read_as_input):
        chain = [end]
        while id(chain[-1]) in previous:
            chain.append(previous[id(chain[-1])])
        chains.append(chain[::-1])
    image_chains = [chain for chain in chains if len(chain) == num_layers]
    if len(image_chains) != 1:
        raise ValueError(
            f"`{where}` has no skip gates to find its blocks' outputs by, so ControlNet residuals cannot be added to its "
            "blocks (a transformer exported by another tool). Convert the folder with this project (`convert_sd3`)."
        )
    return image_chains[0]


def add_controlnet_states(ov_model, *, num_layers: int, where: Path) -> None:
    """Give the transformer graph `ov_model` its ControlNet residual states (see the module docstring), in place."""
    import openvino as ov
    from openvino import opset13 as ops
    from openvino.op.util import Variable, VariableInfo

    block_outputs = find_block_outputs(ov_model, num_layers=num_layers, where=where)
    variables, sinks = [], []
    for index, name in enumerate(controlnet_state_names(num_layers)):
        block_output = block_outputs[index]
        width = block_output.get_output_partial_shape(0)[-1].get_length()
        info = VariableInfo()
        info.data_shape, info.data_type, info.variable_id = ov.PartialShape([-1, -1, width]), ov.Type.f32, name
        variable = Variable(info)
        residual = ops.read_value(ops.constant(np.zeros((1, 1, width), dtype=np.float32)), variable)
        consumers = list(block_output.output(0).get_target_inputs())
        with_residual = ops.add(block_output, residual)
        for consumer in consumers:
            consumer.replace_source_output(with_residual.output(0))
        variables.append(variable)
        sinks.append(ops.assign(residual, variable))
    ov_model.add_variables(variables)
    ov_model.add_sinks(sinks)
    ov_model.validate_nodes_and_infer_types()


def enable_controlnet_states(transformer: OVSubmodel, *, where: Path) -> None:
    """Add the residual states to `transformer`'s graph unless it has them (again after `unload_lora_weights` read the
    IR anew); it compiles again on next use."""
    num_layers = transformer.config["num_layers"]
    if set(controlnet_state_names(num_layers)) <= set(transformer.state_names):
        return
    transformer.check_unshared("Adding ControlNet residual states")
    add_controlnet_states(transformer.model, num_layers=num_layers, where=where)
    transformer.release()


# ----------------------------------------------------------------------------------------------------------
# The converted ControlNets
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ControlNet:
    """One converted ControlNet (a folder of `convert_sd3_controlnet`) and what its config says of its use."""

    submodel: OVSubmodel
    path: Path

    @property
    def config(self) -> dict:
        return self.submodel.config

    @property
    def num_blocks(self) -> int:
        return sum(1 for output in self.submodel.model.outputs if output.get_any_name().startswith(CONTROLNET_OUTPUT))

    @property
    def reads_text(self) -> bool:
        """InstantX's ControlNets read the prompt embeddings; SD3.5's do not (`joint_attention_dim` None)."""
        return self.config.get("joint_attention_dim") is not None

    @property
    def zero_pooled_text(self) -> bool:
        """InstantX's ControlNets were trained with zeros as pooled text (diffusers' `force_zeros_for_pooled_projection`)."""
        return bool(self.config.get("force_zeros_for_pooled_projection", True))

    @property
    def conditioning_channels(self) -> int:
        """Channels of the encoded control image: the latents', plus the mask's for inpainting ControlNets."""
        return self.config["in_channels"] + self.config.get("extra_conditioning_channels", 0)


def check_controlnet_fits(controlnet: ControlNet, *, transformer_config: dict) -> None:
    """Raise a ValueError naming the mismatch if `controlnet` was converted for another transformer than this one."""
    config = controlnet.config
    width = transformer_config["num_attention_heads"] * transformer_config["attention_head_dim"]
    checks = [
        ("width (num_attention_heads x attention_head_dim)", config["num_attention_heads"] * config["attention_head_dim"], width),
        ("latent channels (in_channels)", config["in_channels"], transformer_config["out_channels"]),
        ("patch_size", config["patch_size"], transformer_config["patch_size"]),
        ("pooled_projection_dim", config["pooled_projection_dim"], transformer_config["pooled_projection_dim"]),
    ]
    if config.get("joint_attention_dim") is not None:
        checks.append(("joint_attention_dim", config["joint_attention_dim"], transformer_config["joint_attention_dim"]))
    for what, theirs, ours in checks:
        if theirs != ours:
            raise ValueError(
                f"The ControlNet in `{controlnet.path}` was made for another transformer: its {what} is {theirs}, this "
                f"transformer's is {ours}. Use a ControlNet trained for this model (SD3 Medium: InstantX's SD3 ControlNets; "
                "SD3.5 Large: Stability's SD3.5 Large ControlNets)."
            )


def load_controlnets(controlnet, *, core, device: str, ov_config: dict | None, transformer_config: dict) -> list[ControlNet]:
    """The ControlNet folders `controlnet` (one path, or a list of them) loaded and checked against the transformer."""
    paths = controlnet if isinstance(controlnet, (list, tuple)) else [controlnet]
    if not paths or not all(isinstance(path, (str, Path)) for path in paths):
        raise TypeError(
            f"`controlnet` has to be a folder written by `convert_sd3_controlnet` or a list of them but is {controlnet!r:.120}."
        )
    controlnets = []
    for path in map(Path, paths):
        if not (path / "openvino_model.xml").is_file():
            raise FileNotFoundError(
                f"`controlnet` `{path}` holds no converted ControlNet (`openvino_model.xml`). Convert one with "
                f"`sd3_helper.convert_sd3_controlnet(checkpoint, '{path}')`."
            )
        submodel = OVSubmodel(path, core=core, device=device, ov_config=ov_config)
        submodel.name = "controlnet"  # its stage in the call's metrics (`controlnet_times`), whatever its folder's name
        loaded = ControlNet(submodel, path)
        check_controlnet_fits(loaded, transformer_config=transformer_config)
        controlnets.append(loaded)
    if len({net.num_blocks for net in controlnets}) > 1:
        raise ValueError(
            "Multi-ControlNet sums the ControlNets' residuals block by block, so they need the same number of blocks, but "
            f"these have {[net.num_blocks for net in controlnets]} ({[str(net.path) for net in controlnets]})."
        )
    return controlnets


# ----------------------------------------------------------------------------------------------------------
# One call's residuals
# ----------------------------------------------------------------------------------------------------------


def guidance_keep(*, num_steps: int, starts: list[float], ends: list[float]) -> np.ndarray:
    """(steps, ControlNets): 1 where a ControlNet acts at a step, 0 outside its [start, end] window (diffusers'
    `controlnet_keep`: step i acts when i / steps >= start and (i + 1) / steps <= end)."""
    # Adapted from diffusers' StableDiffusion3ControlNetPipeline.__call__, step 6.
    return np.array(
        [[1.0 - float(step / num_steps < start or (step + 1) / num_steps > end) for start, end in zip(starts, ends)] for step in range(num_steps)],
        dtype=np.float32,
    )


ZEROS = "zeros"  # a ControlNet that reads zeros as pooled text (InstantX's, and diffusers' inpainting ControlNet pipeline)


class ControlNetResiduals:
    """The residual states of each step of one call (`__call__`), run by the pipeline's `run_submodel`.

    `control_latents[k]` is ControlNet k's encoded control image for each image (doubled for guidance when run),
    `scales[k]` its `controlnet_conditioning_scale`, `keep` the guidance window (`guidance_keep`), `pooled_text[k]` the
    pooled text ControlNet k reads: `ZEROS`, an array for the batch, or None (the prompt's)."""

    def __init__(self, *, controlnets, control_latents, scales, keep, pooled_text, num_layers: int, run_submodel):
        self.controlnets, self.control_latents, self.scales, self.keep = controlnets, control_latents, scales, keep
        self.pooled_text, self.num_layers, self.run_submodel = pooled_text, num_layers, run_submodel
        self.last = None  # the states of the last step computed, for skip-layer guidance's pass

    def __call__(self, latent_model_input: np.ndarray, *, timestep: np.float32, step: int, text) -> dict[str, np.ndarray] | None:
        """The transformer's residual states for this step (None when no ControlNet acts: the states stay zero); `text` is
        the call's `text_folding.TransformerText`."""
        summed = None
        for index, controlnet in enumerate(self.controlnets):
            scale = self.scales[index] * self.keep[step, index]
            if scale == 0.0:  # adds exactly nothing: diffusers runs it anyway, we skip the ControlNet's inference
                continue
            inputs = dict(
                hidden_states=latent_model_input,
                controlnet_cond=self.controlnet_cond(index, batch=latent_model_input.shape[0]),
                pooled_projections=self.pooled_projections(index, pooled_prompt_embeds=text.pooled),
                timestep=np.full(latent_model_input.shape[0], timestep, dtype=np.float32),
                conditioning_scale=np.array([scale], dtype=np.float32),
            )
            if controlnet.reads_text:
                inputs.update(text.attention_inputs(controlnet.submodel))
            outputs = self.run_submodel(controlnet.submodel, **inputs)
            samples = [outputs[f"{CONTROLNET_OUTPUT}.{block}"] for block in range(controlnet.num_blocks)]
            summed = samples if summed is None else [total + sample for total, sample in zip(summed, samples)]
        self.last = None if summed is None else self.block_states(summed)
        return self.last

    def controlnet_cond(self, index: int, *, batch: int) -> np.ndarray:
        """ControlNet `index`'s encoded control image for the transformer's `batch` (doubled for guidance)."""
        latents = self.control_latents[index]
        return latents if len(latents) == batch else np.concatenate([latents] * (batch // len(latents)))

    def pooled_projections(self, index: int, *, pooled_prompt_embeds: np.ndarray) -> np.ndarray:
        """The pooled text ControlNet `index` reads: zeros, the user's `controlnet_pooled_projections`, or the prompt's."""
        pooled = self.pooled_text[index]
        if isinstance(pooled, str) and pooled == ZEROS:
            return np.zeros_like(pooled_prompt_embeds)
        return pooled_prompt_embeds if pooled is None else pooled

    def block_states(self, samples: list[np.ndarray]) -> dict[str, np.ndarray]:
        """The ControlNet's block samples as the transformer's per-block states (diffusers' `interval_control`)."""
        interval = self.num_layers / len(samples)
        return {name: samples[int(index / interval)] for index, name in enumerate(controlnet_state_names(self.num_layers))}

    def positive(self) -> dict[str, np.ndarray] | None:
        """The last step's states for the positive half of a guided batch (skip-layer guidance's extra pass)."""
        if self.last is None:
            return None
        return {name: value[len(value) // 2 :] for name, value in self.last.items()}
