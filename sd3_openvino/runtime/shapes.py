"""The shapes the models see, for the pipelines: the shapes policy of `from_pretrained(shapes=...)`, `ShapesMixin.reshape`
(every model input fixed for one kind of call, and each call checked against it), and `enable_vae_tiling` (the VAE
works tile by tile).

Shapes policies:

- "auto" (the default): the text encoders get their fixed token lengths at load; the transformer and the VAE decoder
  are compiled for each call's size and batch (static shapes: OpenVINO's CPU plugin plans their memory ahead, which
  halves the peak at 1024x1024, and runs a little faster), again when a call asks for another one. A pipeline keeps
  `max_compiled_shapes` of them compiled (each holds its own copy of the weights); `cache_dir` makes a shape seen
  before compile from OpenVINO's cache (weightless: the blobs point into the IR, a few MB each).
- "dynamic": every model accepts any size, compiled once (more memory at large sizes; no compilation per size).
- "static": `reshape()` at load for the default call (the native size, one image, guidance on); another call raises.

Imports the layout (for the generation defaults), `runtime/submodels.py` (type hints), `runtime/text_folding.py` (the
text's tokens) and `runtime/vae_tiling.py`.
"""

import logging
from typing import Callable

from ..core.layout import GENERATION_DEFAULTS, SizeRules
from .submodels import OVSubmodel
from .text_folding import TEXT_ATTENTION_BIAS, has_text_attention_bias
from .vae_tiling import TILE_OVERLAP_FACTOR, VaeTiling

SHAPES_POLICIES = ("auto", "dynamic", "static")
DEFAULT_MAX_COMPILED_SHAPES = 1  # one compiled transformer at a time: each shape kept costs a copy of its weights

logger = logging.getLogger(__name__)


def check_shapes_policy(shapes, *, max_compiled_shapes) -> None:
    """Raise a ValueError or TypeError naming `shapes` or `max_compiled_shapes` unless they are usable."""
    if shapes not in SHAPES_POLICIES:
        raise ValueError(f"`shapes` has to be one of {SHAPES_POLICIES} but is {shapes!r:.80}.")
    if isinstance(max_compiled_shapes, bool) or not isinstance(max_compiled_shapes, int) or max_compiled_shapes < 1:
        raise TypeError(f"`max_compiled_shapes` has to be a positive int (1 keeps one compiled size) but is {max_compiled_shapes!r:.80}.")


def call_shape(
    *, height: int, width: int, batch_size: int, num_images_per_prompt: int, do_classifier_free_guidance: bool, max_sequence_length: int,
    text_tokens: int,
) -> dict:  # fmt: skip
    """What fixes every input shape of one kind of call (see `ShapesMixin.reshape`); `text_tokens`: the transformer's
    (after folding, `text_folding.py`)."""
    return dict(
        height=height,
        width=width,
        batch_size=batch_size,
        num_images_per_prompt=num_images_per_prompt,
        do_classifier_free_guidance=do_classifier_free_guidance,
        max_sequence_length=max_sequence_length,
        text_tokens=text_tokens,
    )


class ShapesMixin:
    """The shapes policy, `reshape` and VAE tiling for a pipeline, and what each call does about its shape
    (`fit_call_shape`). `shapes` is the policy ("static" after `reshape`); `_static_shape` the `call_shape` of the last
    `reshape` (None: not reshaped); `vae_tiling` a `VaeTiling` (None: whole images); `on_compile(message)`, when set,
    hears that a call compiles the models for its shape (the demo shows it)."""

    transformer: OVSubmodel
    text_encoder: OVSubmodel
    text_encoder_2: OVSubmodel
    text_encoder_3: OVSubmodel | None
    vae_decoder: OVSubmodel
    size_rules: SizeRules
    vae_scale_factor: int
    tokenizer_max_length: int
    vae_tiling: VaeTiling | None
    shapes: str
    on_compile: Callable[[str], None] | None
    _static_shape: dict | None

    # -- The shapes policy ---------------------------------------------------------------------------------

    def set_shapes_policy(self, shapes: str, *, max_compiled_shapes: int = DEFAULT_MAX_COMPILED_SHAPES) -> None:
        """Apply a shapes policy ("auto", "dynamic", "static"; see this module's docstring) to the loaded models; the
        models compile again on next use. `max_compiled_shapes` bounds the shapes kept compiled under "auto"."""
        check_shapes_policy(shapes, max_compiled_shapes=max_compiled_shapes)
        if shapes == "static":
            self.reshape()
            return
        self.shapes, self._static_shape = shapes, None
        for submodel in (self.transformer, self.vae_decoder):
            submodel.max_compiled_shapes = max_compiled_shapes if shapes == "auto" else 1
        if shapes == "auto":  # the CLIP encoders' token length is fixed; the batch follows the prompts
            for encoder in (self.text_encoder, self.text_encoder_2):
                encoder.reshape({"input_ids": [-1, self.tokenizer_max_length]})

    def fit_call_shape(self, shape: dict, *, transformer_batch_varies: bool = False) -> None:
        """Make the models ready for a call of `shape` (a `call_shape`): under "static" check it is the reshaped one,
        under "auto" give the transformer and VAE decoder its shapes (they compile on first use, or come from the
        shapes kept compiled), under "dynamic" nothing. `transformer_batch_varies`: the call runs the transformer on
        two batch sizes (skip-layer guidance), so its batch stays dynamic."""
        if self.shapes == "static":
            self._check_static_shape(shape)
        elif self.shapes == "auto":
            transformer = self._transformer_shapes(shape, dynamic_batch=transformer_batch_varies)
            decoder = self._vae_decoder_shapes(shape)
            compiles = [model.name for model, shapes in ((self.transformer, transformer), (self.vae_decoder, decoder)) if model.reshape(shapes)]
            if compiles:
                message = f"Compiling the {' and '.join(compiles)} for {shape['width']}x{shape['height']}..."
                logger.info(message)
                if self.on_compile is not None:
                    self.on_compile(message)

    # -- Static shapes -------------------------------------------------------------------------------------

    def reshape(
        self,
        *,
        height: int | None = None,
        width: int | None = None,
        batch_size: int = 1,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        max_sequence_length: int = GENERATION_DEFAULTS.max_sequence_length,
    ):
        """Fix every input shape for one kind of call (static shapes compile to faster code); returns `self`.

        A later call with another size, batch, guidance on/off or `max_sequence_length` raises a ValueError.
        Models compile again on next use (or call `compile()`). With VAE tiling on, the VAE decoder keeps dynamic
        shapes (its tiles differ in size). The default shapes policy ("auto") does this per call, without the error.
        """
        height = self.size_rules.default if height is None else height
        width = self.size_rules.default if width is None else width
        self.size_rules.check(height=height, width=width)
        self.enable_text_folding()
        shape = call_shape(
            height=height,
            width=width,
            batch_size=batch_size,
            num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=do_classifier_free_guidance,
            max_sequence_length=max_sequence_length,
            text_tokens=self.expected_text_tokens(max_sequence_length),
        )
        text_batch = batch_size * (2 if do_classifier_free_guidance else 1)  # positive and negative prompts go through together
        for encoder in (self.text_encoder, self.text_encoder_2):
            encoder.reshape({"input_ids": [text_batch, self.tokenizer_max_length]})
        if self.text_encoder_3 is not None:
            self.text_encoder_3.reshape({"input_ids": [text_batch, max_sequence_length]})
        for submodel in (self.transformer, self.vae_decoder):
            submodel.max_compiled_shapes = 1
        self.transformer.reshape(self._transformer_shapes(shape))
        self.shapes, self._static_shape = "static", shape
        self._reshape_vae_decoder()
        return self

    def _transformer_shapes(self, shape: dict, *, dynamic_batch: bool = False) -> dict[str, list[int]]:
        """The transformer's input shapes for a call of `shape` (a `call_shape`); the batch -1 with `dynamic_batch`."""
        guidance_copies = 2 if shape["do_classifier_free_guidance"] else 1
        batch = -1 if dynamic_batch else shape["batch_size"] * shape["num_images_per_prompt"] * guidance_copies
        config = self.transformer.config
        return {
            "hidden_states": [batch, config["in_channels"], shape["height"] // self.vae_scale_factor, shape["width"] // self.vae_scale_factor],
            "encoder_hidden_states": [batch, shape["text_tokens"], config["joint_attention_dim"]],
            "pooled_projections": [batch, config["pooled_projection_dim"]],
            "timestep": [batch],
            **({TEXT_ATTENTION_BIAS: [shape["text_tokens"]]} if has_text_attention_bias(self.transformer.model) else {}),
            **(self.ip_adapter.input_shapes(batch) if self.ip_adapter is not None else {}),
        }

    def _vae_decoder_shapes(self, shape: dict) -> dict[str, list[int]]:
        """The VAE decoder's input for a call of `shape`: dynamic while tiling (tiles differ in size)."""
        factor = self.vae_scale_factor
        static = [shape["batch_size"] * shape["num_images_per_prompt"], shape["height"] // factor, shape["width"] // factor]
        images, height, width = [-1, -1, -1] if self.vae_tiling is not None else static
        return {"latent_sample": [images, self.vae_decoder.config["latent_channels"], height, width]}

    def _reshape_vae_decoder(self) -> None:
        """The VAE decoder's input for the static shapes of `reshape`."""
        self.vae_decoder.reshape(self._vae_decoder_shapes(self._static_shape))

    def _check_static_shape(self, shape: dict) -> None:
        """Raise a ValueError naming what differs when a call's `call_shape` is not the one `reshape` fixed."""
        if self._static_shape is not None and shape != self._static_shape:
            changed = {key: value for key, value in shape.items() if self._static_shape[key] != value}
            raise ValueError(
                f"This pipeline was reshaped to static shapes {self._static_shape}, but this call asks for {changed}. "
                "Call `pipe.reshape(...)` with the new values (the models compile again), or load the pipeline "
                "with `shapes=\"auto\"` (the default), which compiles the models for each call's shape."
            )

    # -- VAE tiling ----------------------------------------------------------------------------------------

    def enable_vae_tiling(self, *, tile_sample_min_size: int | None = None, tile_overlap_factor: float = TILE_OVERLAP_FACTOR) -> None:
        """Decode (and, in the image pipelines, encode) images larger than one tile tile by tile, blending overlapping
        tiles as diffusers' `enable_vae_tiling()` does: memory for one tile's activations, not the whole image's.
        Tiles are the VAE config's `sample_size` pixels (1024 for SD3) or `tile_sample_min_size`; smaller images decode
        whole. A ValueError names tiles too small to overlap. After `reshape` the VAE decoder turns dynamic again."""
        self.vae_tiling = VaeTiling.from_config(
            self.vae_decoder.config, tile_sample_min_size=tile_sample_min_size, tile_overlap_factor=tile_overlap_factor
        )
        if self._static_shape is not None:
            self._reshape_vae_decoder()

    def disable_vae_tiling(self) -> None:
        """Decode (and encode) whole images again, in one VAE call."""
        self.vae_tiling = None
        if self._static_shape is not None:
            self._reshape_vae_decoder()
