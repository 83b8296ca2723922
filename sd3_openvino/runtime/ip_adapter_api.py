"""diffusers' IP-Adapter API (`SD3IPAdapterMixin`) for the OpenVINO pipelines: `load_ip_adapter`, `set_ip_adapter_scale`,
`unload_ip_adapter`, `is_ip_adapter_active`, and the image prompt of a call (`ip_adapter_image` /
`ip_adapter_image_embeds`). The graph work and the per-step inputs are `ip_adapter.py`'s.

Imports numpy and `ip_adapter.py`; a source that is not yet converted is converted by `export/ip_adapter.py`
(imported then: it needs torch), into a folder beside the SD3 folder's submodels.
"""

import re
from pathlib import Path

import numpy as np

from .arrays import as_array
from .ip_adapter import (
    ImagePrompt,
    add_ip_adapter_attention,
    check_ip_adapter_fits,
    check_ip_adapter_scale,
    check_no_dual_attention,
    has_ip_adapter_attention,
    is_ip_adapter_folder,
    load_ip_adapter_folder,
    preprocess_ip_image,
    remove_ip_adapter_attention,
)
from .loading import shared_ov_config

IP_ADAPTERS_DIR = "ip_adapters"  # where `load_ip_adapter` converts a source into, inside the SD3 folder


def converted_ip_adapter_dir(model_dir: Path, source, *, weight_name: str, subfolder: str | None) -> Path:
    """Where `load_ip_adapter` converts `source` to when no `output_dir` is given: `model_dir/ip_adapters/<name>`."""
    if isinstance(source, dict):
        raise ValueError("`load_ip_adapter` of a state dict converts it first: pass `output_dir`, the folder to convert it into.")
    name = re.sub(r"[^\w.-]+", "--", f"{source}--{subfolder or ''}--{Path(weight_name).stem}".strip("-/. "))
    return Path(model_dir) / IP_ADAPTERS_DIR / name[-120:]


class IPAdapterMixin:
    """IP-Adapter loading and image prompts for a pipeline with `transformer`, `model_dir`, `run_submodel`."""

    @property
    def ip_adapter(self):
        """The loaded `ip_adapter.IPAdapter`, or None. It lives with the transformer graph it is stitched into, so the
        pipelines that share that transformer (`from_pipe`) share it too."""
        return getattr(self.transformer, "ip_adapter", None)

    @ip_adapter.setter
    def ip_adapter(self, adapter) -> None:
        self.transformer.ip_adapter = adapter

    def load_ip_adapter(
        self,
        pretrained_model_name_or_path_or_dict,
        weight_name: str = "ip-adapter.safetensors",
        subfolder: str | None = None,
        image_encoder_folder: str | None = "image_encoder",
        *,
        output_dir: str | Path | None = None,
        weight_format: str | None = None,
    ) -> None:
        """Load an SD3 IP-Adapter (diffusers' `load_ip_adapter`): a folder converted by `convert_sd3_ip_adapter`, or its
        source as diffusers takes it (hub id, folder, file or state dict; InstantX's weights: `weight_name="ip-adapter.bin"`,
        `image_encoder_folder="google/siglip-so400m-patch14-384"`), converted once into `output_dir` (default
        `model_dir/ip_adapters/<name>`; needs torch) at the folder's weight format or `weight_format`. The adapter's scale
        starts at 0.5, as in diffusers. A transformer with dual-attention blocks (SD3.5 Medium) is refused."""
        config, where = self.transformer.config, self.model_dir / "transformer"
        check_no_dual_attention(config, where=where)  # before any conversion
        source = pretrained_model_name_or_path_or_dict
        folder = Path(source) if is_ip_adapter_folder(source) else None
        if folder is None:
            from ..export.ip_adapter import convert_sd3_ip_adapter  # conversion needs torch: only for a source not yet converted

            folder = Path(output_dir) if output_dir is not None else converted_ip_adapter_dir(self.model_dir, source, weight_name=weight_name, subfolder=subfolder)
            convert_sd3_ip_adapter(
                source, folder, model_dir=self.model_dir, weight_name=weight_name, subfolder=subfolder,
                image_encoder_folder=image_encoder_folder, weight_format=weight_format,
            )  # fmt: skip
        transformer = self.transformer
        adapter = load_ip_adapter_folder(folder, core=transformer.core, device=transformer.device, ov_config=shared_ov_config(transformer))
        check_ip_adapter_fits(adapter, transformer_config=config, where=where)
        if self.ip_adapter is not None:
            self.unload_ip_adapter()
        self.ip_adapter = adapter
        self.enable_ip_adapter_attention()

    def enable_ip_adapter_attention(self) -> None:
        """Stitch the loaded adapter's image attention into the transformer graph unless it is there (again after
        `unload_lora_weights` read the IR anew); the transformer compiles again on next use."""
        transformer = self.transformer
        if self.ip_adapter is None or has_ip_adapter_attention(transformer.model):
            return
        transformer.check_unshared("Loading an IP-Adapter")
        attention = transformer.core.read_model(self.ip_adapter.path / "attention" / "openvino_model.xml")
        add_ip_adapter_attention(transformer.model, attention, num_layers=transformer.config["num_layers"], where=self.model_dir / "transformer")
        if transformer.shapes is not None:  # static shapes: the adapter's inputs too, for the batch in use
            batch = transformer.shapes["hidden_states"][0]
            transformer.shapes.update(self.ip_adapter.input_shapes(batch))
            transformer.model.reshape(transformer.shapes)
        transformer.release()

    def set_ip_adapter_scale(self, scale: float) -> None:
        """How strongly the image prompt conditions the images: 0 ignores it (the text-only image), 1 is the adapter's
        full weight (diffusers' `set_ip_adapter_scale`)."""
        if self.ip_adapter is None:
            raise ValueError("`set_ip_adapter_scale` needs an IP-Adapter: load one first with `pipe.load_ip_adapter(...)`.")
        self.ip_adapter.scale = check_ip_adapter_scale(scale)

    def unload_ip_adapter(self) -> None:
        """Remove the IP-Adapter: its image attention leaves the transformer graph (LoRA and ControlNet states stay), its
        models are freed; the transformer compiles again on next use."""
        if self.ip_adapter is None:
            return
        transformer = self.transformer
        if has_ip_adapter_attention(transformer.model):
            transformer.check_unshared("Unloading the IP-Adapter")
            remove_ip_adapter_attention(transformer.model)
            if transformer.shapes is not None:
                transformer.shapes = {name: dims for name, dims in transformer.shapes.items() if name in {i.get_any_name() for i in transformer.model.inputs}}
            transformer.release()
        self.ip_adapter = None

    @property
    def is_ip_adapter_active(self) -> bool:
        """True when an IP-Adapter is loaded with a scale other than 0."""
        return self.ip_adapter is not None and self.ip_adapter.scale != 0.0

    # -- A call's image prompt -------------------------------------------------------------------------------

    def encode_ip_adapter_image(self, image) -> np.ndarray:
        """Image(s) -> (n, tokens, width) features of the image encoder: SigLIP's penultimate hidden states (diffusers'
        `encode_image`, renamed: the image pipelines' `encode_image` is the VAE's). Each image is encoded once while it
        stays among the adapter's recent images."""
        adapter = self.ip_adapter
        if adapter.image_encoder is None:
            raise ValueError(
                f"The IP-Adapter in `{adapter.path}` was loaded without an image encoder (`image_encoder_folder=None`), so it "
                "cannot encode `ip_adapter_image`. Pass `ip_adapter_image_embeds`, or load the adapter with "
                "`image_encoder_folder` (InstantX's: 'google/siglip-so400m-patch14-384')."
            )
        images = image if isinstance(image, (list, tuple)) else [image]

        def encode(pixels: np.ndarray) -> np.ndarray:
            return self.run_submodel(adapter.image_encoder, pixel_values=pixels)["image_embeds"]

        return np.stack([adapter.features.get(preprocess_ip_image(item, preprocessing=adapter.preprocessing), encode) for item in images])

    def check_ip_adapter_inputs(self, *, ip_adapter_image, ip_adapter_image_embeds, batch_size: int, do_classifier_free_guidance: bool) -> None:
        """Named errors for an image prompt the call cannot use (see `prepare_ip_adapter_image_embeds`)."""
        if ip_adapter_image is None and ip_adapter_image_embeds is None:
            return
        if self.ip_adapter is None:
            raise ValueError(
                "`ip_adapter_image` / `ip_adapter_image_embeds` need an IP-Adapter: load one first with "
                "`pipe.load_ip_adapter(...)` (e.g. 'InstantX/SD3.5-Large-IP-Adapter')."
            )
        if ip_adapter_image is not None and ip_adapter_image_embeds is not None:
            raise ValueError("Pass either `ip_adapter_image` or `ip_adapter_image_embeds`, not both.")
        if ip_adapter_image is not None:
            _check_images(ip_adapter_image, batch_size=batch_size)
        else:
            _check_embeds(ip_adapter_image_embeds, batch_size=batch_size, width=self.ip_adapter.embed_dim, guided=do_classifier_free_guidance)

    def prepare_ip_adapter_image_embeds(
        self, ip_adapter_image=None, ip_adapter_image_embeds=None, num_images_per_prompt: int = 1, do_classifier_free_guidance: bool = True
    ) -> np.ndarray:
        """The image features for the transformer batch (diffusers' `prepare_ip_adapter_image_embeds`, whose
        `num_images_per_prompt` is the call's number of images): one image (or embedding) for every prompt, or one per
        prompt, each repeated for its images; under guidance zeros (or the negative half of `ip_adapter_image_embeds`,
        given as [negative, positive]) first."""
        if ip_adapter_image_embeds is not None:
            embeds = as_array(ip_adapter_image_embeds).astype(np.float32)
            negative, positive = np.split(embeds, 2) if do_classifier_free_guidance else (None, embeds)
        else:
            positive = self.encode_ip_adapter_image(ip_adapter_image)
            negative = np.zeros_like(positive)

        def per_image(embeds: np.ndarray) -> np.ndarray:  # (1 or one per prompt, ...) -> (images, ...), prompt by prompt
            return np.repeat(embeds, num_images_per_prompt // len(embeds), axis=0)

        if not do_classifier_free_guidance:
            return per_image(positive)
        return np.concatenate([per_image(negative), per_image(positive)])

    def prepare_image_prompt(self, ip_adapter_image, ip_adapter_image_embeds, *, batch_size: int, num_images: int, do_classifier_free_guidance: bool):
        """The call's `ImagePrompt` after its checks (`check_ip_adapter_inputs`), or None without an image prompt (or at
        scale 0, which adds nothing); `num_images`: the call's images (prompts x images per prompt)."""
        self.check_ip_adapter_inputs(
            ip_adapter_image=ip_adapter_image, ip_adapter_image_embeds=ip_adapter_image_embeds, batch_size=batch_size,
            do_classifier_free_guidance=do_classifier_free_guidance,
        )  # fmt: skip
        if (ip_adapter_image is None and ip_adapter_image_embeds is None) or not self.is_ip_adapter_active:
            return None
        image_embeds = self.prepare_ip_adapter_image_embeds(
            ip_adapter_image, ip_adapter_image_embeds, num_images_per_prompt=num_images, do_classifier_free_guidance=do_classifier_free_guidance
        )
        return ImagePrompt(self.ip_adapter, image_embeds, self.ip_adapter.scale)

    def ip_adapter_inputs(self, image_prompt, *, timestep, batch: int, positive_only: bool = False) -> dict[str, np.ndarray]:
        """The transformer's adapter inputs for one inference: none without an adapter, zeros at scale 0 without an image
        prompt, else the resampler's features for `timestep`."""
        if self.ip_adapter is None:
            return {}
        self.enable_ip_adapter_attention()
        if image_prompt is None:
            return self.ip_adapter.zero_inputs(batch)
        return image_prompt.inputs(timestep=timestep, run_submodel=self.run_submodel, positive_only=positive_only)


def _check_images(image, *, batch_size: int) -> None:
    from PIL import Image

    images = image if isinstance(image, (list, tuple)) else [image]
    for item in images:
        if not isinstance(item, Image.Image) and not (isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 3 and item.shape[-1] in (3, 4)):
            raise TypeError(
                "`ip_adapter_image` has to be a PIL image, an (H, W, 3) uint8 array, or a list of them (one for every prompt, "
                f"or one per prompt) but holds {type(item).__name__}"
                f"{f' of dtype {item.dtype} and shape {item.shape}' if isinstance(item, np.ndarray) else ''}."
            )
    if len(images) not in (1, batch_size):
        raise ValueError(
            f"`ip_adapter_image` holds {len(images)} images for {batch_size} prompt(s): pass one image for every prompt, or one "
            "per prompt."
        )


def _check_embeds(embeds, *, batch_size: int, width: int, guided: bool) -> None:
    array = as_array(embeds)
    counts = [2, 2 * batch_size] if guided else [1, batch_size]
    if array.ndim != 3 or array.shape[-1] != width or len(array) not in counts:
        layout = "[negative, positive] halves along the batch, " if guided else ""
        raise ValueError(
            f"`ip_adapter_image_embeds` has to be (n, tokens, {width}): the image encoder's features ({layout}n "
            f"{' or '.join(map(str, counts))}) but has shape {tuple(array.shape)}."
        )
    if not np.isfinite(array).all():
        raise ValueError("`ip_adapter_image_embeds` holds NaN or infinite values.")
