"""The shapes the models see, for the pipelines: `ShapesMixin.reshape` fixes every model input for one kind of
call (and each call checks it is of that kind), and `enable_vae_tiling` has the VAE work tile by tile.

Imports the layout (for the generation defaults), `runtime/submodels.py` (type hints) and `runtime/vae_tiling.py`.
"""

from ..core.layout import GENERATION_DEFAULTS, SizeRules
from .submodels import OVSubmodel
from .vae_tiling import TILE_OVERLAP_FACTOR, VaeTiling


def call_shape(
    *, height: int, width: int, batch_size: int, num_images_per_prompt: int, do_classifier_free_guidance: bool, max_sequence_length: int
) -> dict:
    """What fixes every input shape of one kind of call (see `ShapesMixin.reshape`)."""
    return dict(
        height=height,
        width=width,
        batch_size=batch_size,
        num_images_per_prompt=num_images_per_prompt,
        do_classifier_free_guidance=do_classifier_free_guidance,
        max_sequence_length=max_sequence_length,
    )


class ShapesMixin:
    """`reshape` and VAE tiling for a pipeline, and the check each call makes against `reshape`. `_static_shape` is the
    `call_shape` of the last `reshape` (None: dynamic shapes); `vae_tiling` a `VaeTiling` (None: whole images)."""

    transformer: OVSubmodel
    text_encoder: OVSubmodel
    text_encoder_2: OVSubmodel
    text_encoder_3: OVSubmodel | None
    vae_decoder: OVSubmodel
    size_rules: SizeRules
    vae_scale_factor: int
    tokenizer_max_length: int
    vae_tiling: VaeTiling | None
    _static_shape: dict | None

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
        shapes (its tiles differ in size).
        """
        height = self.size_rules.default if height is None else height
        width = self.size_rules.default if width is None else width
        self.size_rules.check(height=height, width=width)
        guidance_copies = 2 if do_classifier_free_guidance else 1
        text_batch = batch_size * guidance_copies  # positive and negative prompts go through together
        image_batch = batch_size * num_images_per_prompt
        latent_height, latent_width = height // self.vae_scale_factor, width // self.vae_scale_factor
        transformer = self.transformer.config
        sequence_length = self.tokenizer_max_length + max_sequence_length

        for encoder in (self.text_encoder, self.text_encoder_2):
            encoder.reshape({"input_ids": [text_batch, self.tokenizer_max_length]})
        if self.text_encoder_3 is not None:
            self.text_encoder_3.reshape({"input_ids": [text_batch, max_sequence_length]})
        transformer_batch = image_batch * guidance_copies
        self.transformer.reshape(
            {
                "hidden_states": [transformer_batch, transformer["in_channels"], latent_height, latent_width],
                "encoder_hidden_states": [transformer_batch, sequence_length, transformer["joint_attention_dim"]],
                "pooled_projections": [transformer_batch, transformer["pooled_projection_dim"]],
                "timestep": [transformer_batch],
            }
        )
        self._static_shape = call_shape(
            height=height,
            width=width,
            batch_size=batch_size,
            num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=do_classifier_free_guidance,
            max_sequence_length=max_sequence_length,
        )
        self._reshape_vae_decoder()
        return self

    def _reshape_vae_decoder(self) -> None:
        """The VAE decoder's input for the static shapes of `reshape`: dynamic while tiling (tiles differ in size)."""
        shape, factor = self._static_shape, self.vae_scale_factor
        static = [shape["batch_size"] * shape["num_images_per_prompt"], shape["height"] // factor, shape["width"] // factor]
        images, height, width = [-1, -1, -1] if self.vae_tiling is not None else static
        self.vae_decoder.reshape({"latent_sample": [images, self.vae_decoder.config["latent_channels"], height, width]})

    def _check_static_shape(self, shape: dict) -> None:
        """Raise a ValueError naming what differs when a call's `call_shape` is not the one `reshape` fixed."""
        if self._static_shape is not None and shape != self._static_shape:
            changed = {key: value for key, value in shape.items() if self._static_shape[key] != value}
            raise ValueError(
                f"This pipeline was reshaped to static shapes {self._static_shape}, but this call asks for {changed}. "
                "Call `pipe.reshape(...)` with the new values (the models compile again), or load the pipeline "
                "again without reshaping for dynamic shapes."
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
