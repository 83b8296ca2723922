"""A tiny random-weight Stable Diffusion 3 checkpoint, built offline from configs.

Real SD3 weights need a download (and a Hugging Face login). The tests, the CI and the notebook's offline
mode use this checkpoint instead: it has every part the real model has (MMDiT transformer, CLIP-L-like and
CLIP-G-like text encoders of different widths, a T5 encoder, a VAE, a flow-matching scheduler and three
tokenizers), in the diffusers folder layout, so it exercises exactly the same code paths in seconds.

The widths are chosen to differ from each other (32, 48, 96, ...) so that a constant copied from the wrong
config shows up as a shape error instead of passing silently.
"""

import json
from pathlib import Path

import torch

from ..core.files import staged_dir
from .loading import quiet_progress_bars

LATENT_CHANNELS = 4  # the tiny VAE's latent channels by default (SD3's has 16)
# Transformer options that give each family its block types (the real models: SD3 Medium 24 plain blocks;
# SD3.5 Medium 24 blocks with qk-norm, the first 13 with dual attention; SD3.5 Large 38 blocks with qk-norm).
TINY_FAMILIES = {
    "sd3": dict(num_layers=2),
    "sd3.5-medium": dict(num_layers=10, qk_norm="rms_norm", dual_attention_layers=(0, 1, 2, 3, 4, 5)),  # 10: layers 7-9 exist
    "sd3.5-large": dict(num_layers=3, qk_norm="rms_norm"),
}
# A small built-in corpus the tokenizers are trained on; it only needs to cover common prompt words.
TOKENIZER_CORPUS = [
    "a photo of a cat sitting on a wooden table",
    "an astronaut riding a horse on the moon, digital art",
    "a watercolor painting of a lighthouse at sunset",
    "portrait of an old man with a beard, dramatic lighting, 85mm",
    "a bowl of ramen with eggs and green onions, food photography",
    "a futuristic city skyline at night with neon lights",
    "a cute corgi wearing sunglasses on the beach",
    "a red sports car driving through a forest road in autumn",
    "an oil painting of a ship in a stormy sea",
    "a cozy cabin in the snowy mountains, warm light in the windows",
    "a robot reading a book in a library, highly detailed",
    "a field of sunflowers under a blue sky with white clouds",
    "a dragon flying over a medieval castle, fantasy illustration",
    "a macro photo of a dew drop on a green leaf",
    "a minimalist poster with the text hello world in bold letters",
    "a raccoon playing the guitar, cartoon style",
    "blurry, low quality, deformed, ugly, watermark, text",
    "the quick brown fox jumps over the lazy dog 0 1 2 3 4 5 6 7 8 9",
]


def train_clip_tokenizer(*, vocab_size: int, pad_token: str):
    """A byte-level BPE tokenizer with CLIP's normalizer, pre-tokenizer and special tokens."""
    from tokenizers import pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    untrained = CLIPTokenizer()
    special_tokens = ["<|startoftext|>", "<|endoftext|>"] + ([pad_token] if pad_token != "<|endoftext|>" else [])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    backend = untrained.backend_tokenizer
    backend.train_from_iterator(TOKENIZER_CORPUS, trainer=trainer)
    model_state = json.loads(backend.to_str())["model"]
    merges = [tuple(merge) if isinstance(merge, list) else tuple(merge.split(" ")) for merge in model_state["merges"]]
    return CLIPTokenizer(vocab=model_state["vocab"], merges=merges, pad_token=pad_token, model_max_length=77)


def train_t5_tokenizer(*, vocab_size: int):
    """A Unigram tokenizer with T5's pre-tokenizer and special tokens (`<pad>`, `</s>`, `<unk>`)."""
    from tokenizers import trainers
    from transformers import T5Tokenizer

    untrained = T5Tokenizer(extra_ids=0)
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        show_progress=False,
    )
    backend = untrained.backend_tokenizer
    backend.train_from_iterator(TOKENIZER_CORPUS, trainer=trainer)
    vocab = [tuple(entry) for entry in json.loads(backend.to_str())["model"]["vocab"]]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def _clip_text_encoder(*, hidden_size: int, vocab_size: int, pad_token_id: int, eos_token_id: int, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        projection_dim=hidden_size,  # SD3's pooled embedding is the concatenation of both projections
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        vocab_size=vocab_size,
        hidden_act="gelu",
        pad_token_id=pad_token_id,
        bos_token_id=0,
        eos_token_id=eos_token_id,
    )
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(config).eval()


CLIP_L_WIDTH, CLIP_G_WIDTH, T5_WIDTH = 32, 48, 96  # all different, as in the real model (768, 1280, 4096)


def _tiny_text_encoders(tokenizers: tuple, *, seed: int) -> tuple:
    """CLIP-L-like, CLIP-G-like and T5 encoders sized for `tokenizers`, seeded by `seed`, `seed + 1`, `seed + 2`."""
    from transformers import T5Config, T5EncoderModel

    tokenizer, tokenizer_2, tokenizer_3 = tokenizers
    text_encoders = [
        _clip_text_encoder(
            hidden_size=width,
            vocab_size=len(clip_tokenizer),
            pad_token_id=clip_tokenizer.pad_token_id,
            eos_token_id=clip_tokenizer.eos_token_id,
            seed=seed + index,
        )
        for index, (width, clip_tokenizer) in enumerate(((CLIP_L_WIDTH, tokenizer), (CLIP_G_WIDTH, tokenizer_2)))
    ]
    torch.manual_seed(seed + 2)
    t5_config = T5Config(
        vocab_size=len(tokenizer_3),
        d_model=T5_WIDTH,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer_3.pad_token_id,
        eos_token_id=tokenizer_3.eos_token_id,
        decoder_start_token_id=tokenizer_3.pad_token_id,
    )
    return (*text_encoders, T5EncoderModel(t5_config).eval())


def _tiny_transformer(*, family: str, latent_channels: int, inpainting: bool, seed: int):
    """An MMDiT of `family`'s block types reading the tiny text encoders' widths, seeded by `seed`."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=32,  # default latent size, so the default image is 32 * vae_scale_factor pixels
        patch_size=2,
        in_channels=2 * latent_channels + 1 if inpainting else latent_channels,
        out_channels=latent_channels,
        **TINY_FAMILIES[family],
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=T5_WIDTH,  # CLIP embeddings are zero-padded to the T5 width
        caption_projection_dim=32,  # = heads * head_dim
        pooled_projection_dim=CLIP_L_WIDTH + CLIP_G_WIDTH,
        pos_embed_max_size=48,  # images up to 48 * patch_size * vae_scale_factor pixels
    ).eval()


def _tiny_vae(*, latent_channels: int, seed: int):
    """A two-block `AutoencoderKL` (vae_scale_factor 2) with SD3's scaling and shift factors, seeded by `seed`."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),  # 2 blocks -> vae_scale_factor 2 (the real VAE has 4 -> 8)
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=1.5305,  # SD3's values, so the (latents / scaling) + shift step is exercised
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()


def make_tiny_sd3(
    output_dir: str | Path, *, seed: int = 0, family: str = "sd3", latent_channels: int = LATENT_CHANNELS, inpainting: bool = False
) -> Path:
    """Write a tiny random-weight SD3 checkpoint in diffusers format to `output_dir` and return its path.

    `family` picks the transformer's block types (`TINY_FAMILIES`: "sd3", "sd3.5-medium" with qk-norm and
    dual-attention blocks, "sd3.5-large" with qk-norm). `latent_channels` is the VAE's (SD3's real VAE has 16; diffusers' inpainting pipeline works only with 16).
    With `inpainting=True` the transformer reads 2 * latent_channels + 1 input channels (latents, mask and
    masked-image latents), like the 33-channel SD3 inpainting models.

    Everything is built from configs on this machine (no download). The same `seed` always gives the same
    weights; the tokenizers are trained afresh each call, and their vocabularies may order tied merges
    differently. The folder loads with `diffusers.StableDiffusion3Pipeline.from_pretrained`.
    An existing complete checkpoint at `output_dir` is replaced; the folder appears atomically, so an
    interrupted call never leaves a half-written checkpoint behind.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    if family not in TINY_FAMILIES:
        raise ValueError(f"`family` must be one of {list(TINY_FAMILIES)} but is {family!r}.")
    output_dir = Path(output_dir)
    tokenizers = (
        train_clip_tokenizer(vocab_size=600, pad_token="<|endoftext|>"),
        train_clip_tokenizer(vocab_size=600, pad_token="!"),  # SD3's CLIP-G tokenizer pads with "!"
        train_t5_tokenizer(vocab_size=400),
    )
    text_encoders = _tiny_text_encoders(tokenizers, seed=seed)
    pipe = StableDiffusion3Pipeline(
        transformer=_tiny_transformer(family=family, latent_channels=latent_channels, inpainting=inpainting, seed=seed + 3),
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=_tiny_vae(latent_channels=latent_channels, seed=seed + 4),
        **{f"text_encoder{suffix}": encoder for suffix, encoder in zip(("", "_2", "_3"), text_encoders)},
        **{f"tokenizer{suffix}": tokenizer for suffix, tokenizer in zip(("", "_2", "_3"), tokenizers)},
    )
    with staged_dir(output_dir) as staging, quiet_progress_bars():
        pipe.save_pretrained(staging)
    return output_dir


def make_tiny_taesd(output_dir: str | Path, *, latent_channels: int = LATENT_CHANNELS, vae_scale_factor: int = 2, seed: int = 0) -> Path:
    """Write a tiny random-weight TAESD-style autoencoder (diffusers' `AutoencoderTiny`) to `output_dir` and return it.

    It stands in for `madebyollin/taesd3` (which needs a download) in the tests: the same classes and conventions
    (latents taken as the denoising loop holds them, `scaling_factor` 1, images in [-1, 1]), with `latent_channels`
    and one stage per doubling of `vae_scale_factor` (the tiny SD3's VAE: 4 channels, 2 pixels per cell; taesd3: 16
    and 8), one block of 12 channels per stage. The same `seed` gives the same weights.
    """
    from diffusers import AutoencoderTiny

    stages = vae_scale_factor.bit_length()  # 2 -> 2 stages (one upsampling), 8 -> 4 stages
    if vae_scale_factor < 1 or 2 ** (stages - 1) != vae_scale_factor:
        raise ValueError(f"`vae_scale_factor` has to be a power of 2 (pixels per latent cell, 8 for SD3) but is {vae_scale_factor}.")
    torch.manual_seed(seed)
    autoencoder = AutoencoderTiny(
        latent_channels=latent_channels,
        encoder_block_out_channels=(12,) * stages,
        decoder_block_out_channels=(12,) * stages,
        num_encoder_blocks=(1,) * stages,
        num_decoder_blocks=(1,) * stages,
    ).eval()
    with staged_dir(Path(output_dir)) as staging:
        autoencoder.save_pretrained(staging)
    return Path(output_dir)


TINY_LORA_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0")  # the usual SD3 transformer LoRA
TINY_TEXT_ENCODER_LORA_TARGETS = ("q_proj", "v_proj")  # CLIP attention, as text-encoder LoRAs train it


def make_tiny_lora(
    checkpoint: str | Path,
    output_dir: str | Path,
    *,
    seed: int = 0,
    rank: int = 4,
    alpha: float | None = None,
    targets: tuple[str, ...] = TINY_LORA_TARGETS,
    text_encoder_targets: tuple[str, ...] = (),
) -> Path:
    """Write a random LoRA for the transformer of the checkpoint at `checkpoint` to `output_dir` and return the
    folder (diffusers' `pytorch_lora_weights.safetensors`, peft format with its `lora_alpha` in the metadata).
    `alpha` defaults to `rank` (scaling 1): openvino.genai reads no peft metadata and scales by its own alpha only.
    With `text_encoder_targets` (e.g. `TINY_TEXT_ENCODER_LORA_TARGETS`) the LoRA also holds layers for both CLIP
    text encoders; with `targets=()` it holds text-encoder layers only.

    Made with peft on the real models, with random (not zero) `lora_B`, so the LoRA changes the image; the
    same `seed` gives the same LoRA. Stands in for a downloaded adapter in the tests and the tiny notebook run.
    """
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextModelWithProjection

    layers, metadata = {}, {}
    parts = [("transformer", SD3Transformer2DModel, targets)]
    parts += [(name, CLIPTextModelWithProjection, text_encoder_targets) for name in ("text_encoder", "text_encoder_2")]
    for index, (name, model_class, modules) in enumerate(parts):
        if not modules:
            continue
        model = model_class.from_pretrained(str(checkpoint), subfolder=name)
        config = LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, target_modules=list(modules), init_lora_weights=False)
        torch.manual_seed(seed + index)
        model.add_adapter(config)
        for parameter_name, parameter in model.named_parameters():
            if "lora_B" in parameter_name:  # peft's random init of B is tiny; make the effect visible on a tiny model
                torch.nn.init.normal_(parameter, std=0.5)
        layers[f"{name}_lora_layers"] = get_peft_model_state_dict(model)
        metadata[f"{name}_lora_adapter_metadata"] = config.to_dict()
    with staged_dir(Path(output_dir)) as staging:
        StableDiffusion3Pipeline.save_lora_weights(staging, **layers, **metadata)
    return Path(output_dir)


# The two ControlNet families diffusers' `SD3ControlNetModel` supports, as options of its config.
TINY_CONTROLNET_FAMILIES = {
    # InstantX's SD3 ControlNets: own patch embedding, joint blocks that read the text, zeros as pooled text.
    "instantx": dict(use_pos_embed=True, force_zeros_for_pooled_projection=True),
    # Stability's SD3.5 ControlNets: the transformer's patch embedding, single blocks (no text), qk-norm, pooled text used.
    "sd3.5": dict(use_pos_embed=False, force_zeros_for_pooled_projection=False, joint_attention_dim=None, qk_norm="rms_norm"),
}


def make_tiny_sd3_controlnet(
    checkpoint: str | Path, output_dir: str | Path, *, family: str = "instantx", num_layers: int = 1, inpainting: bool = False, seed: int = 0
) -> Path:
    """Write a tiny random-weight ControlNet for the tiny SD3 checkpoint at `checkpoint` to `output_dir` (diffusers
    format, `SD3ControlNetModel.save_pretrained`) and return the folder.

    `family` is "instantx" (InstantX's SD3 ControlNets) or "sd3.5" (Stability's SD3.5 ControlNets: `use_pos_embed=False`,
    no text input, qk-norm); see `TINY_CONTROLNET_FAMILIES`. `num_layers` ControlNet blocks feed the transformer's
    blocks as diffusers maps them (`interval = transformer layers / num_layers`). `inpainting=True` adds the mask
    channel (`extra_conditioning_channels=1`), as Alimama's SD3 inpainting ControlNet. The widths are read from the
    checkpoint's transformer config. diffusers initialises the output layers to zero (a ControlNet that does nothing);
    here they are random, so the ControlNet changes the image. The same `seed` gives the same weights.
    """
    from diffusers import SD3ControlNetModel

    if family not in TINY_CONTROLNET_FAMILIES:
        raise ValueError(f"`family` must be one of {list(TINY_CONTROLNET_FAMILIES)} but is {family!r}.")
    config = json.loads((Path(checkpoint) / "transformer" / "config.json").read_text())
    options = {
        "joint_attention_dim": config["joint_attention_dim"],
        "caption_projection_dim": config["caption_projection_dim"],
        **TINY_CONTROLNET_FAMILIES[family],
    }
    torch.manual_seed(seed)
    controlnet = SD3ControlNetModel(
        sample_size=config["sample_size"],
        patch_size=config["patch_size"],
        in_channels=config["out_channels"],  # the latents' channels (an inpainting transformer reads more)
        num_layers=num_layers,
        attention_head_dim=config["attention_head_dim"],
        num_attention_heads=config["num_attention_heads"],
        pooled_projection_dim=config["pooled_projection_dim"],
        out_channels=config["out_channels"],
        pos_embed_max_size=config["pos_embed_max_size"],
        extra_conditioning_channels=1 if inpainting else 0,
        **options,
    ).eval()
    with torch.no_grad():
        for module in (*controlnet.controlnet_blocks, controlnet.pos_embed_input):
            for parameter in module.parameters():
                torch.nn.init.normal_(parameter, std=0.2)
    with staged_dir(Path(output_dir)) as staging, quiet_progress_bars():
        controlnet.save_pretrained(staging)
    return Path(output_dir)


# InstantX's names for the resampler's layers, by diffusers' names (the inverse of diffusers'
# `_convert_ip_adapter_image_proj_to_diffusers`): the tiny adapter is written in the layout users download.
INSTANTX_RESAMPLER_NAMES = {
    "ln0": "0.norm1",
    "ln1": "0.norm2",
    "attn.to_q": "0.to_q",
    "attn.to_kv": "0.to_kv",
    "attn.to_out.0": "0.to_out",
    "adaln_norm": "1.0",
    "ff.net.0.proj": "1.1",
    "ff.net.2": "1.3",
    "adaln_proj": "2.1",
}


def instantx_resampler_key(key: str) -> str:
    """A diffusers `IPAdapterTimeImageProjection` key in InstantX's layout ("layers.0.attn.to_q.weight" -> "layers.0.0.to_q.weight")."""
    if not key.startswith("layers."):
        return key
    _, index, rest = key.split(".", 2)
    for diffusers_name, instantx_name in INSTANTX_RESAMPLER_NAMES.items():
        if rest.startswith(diffusers_name + "."):
            return f"layers.{index}.{instantx_name}{rest[len(diffusers_name):]}"
    raise KeyError(f"no InstantX name for resampler key {key!r}")


def make_tiny_ip_adapter(checkpoint: str | Path, output_dir: str | Path, *, seed: int = 0, image_size: int = 32) -> Path:
    """Write a tiny random-weight SD3 IP-Adapter for the tiny SD3 checkpoint at `checkpoint` to `output_dir`; return it.

    The layout diffusers' `load_ip_adapter` reads and InstantX publishes: `ip-adapter.safetensors` with `image_proj.*`
    (a timestep-aware resampler, InstantX's key names) and `ip_adapter.{block}.*` (one image attention per transformer
    block, sized from the checkpoint's transformer), and `image_encoder/`, a tiny SigLIP vision model (`image_size`
    pixels, 16 patches) with its `preprocessor_config.json`. diffusers fixes the resampler's head width at 64 and its
    output at the transformer's width; the rest is small. Random weights, so the adapter changes the image; the same
    `seed` gives the same adapter. Stands in for InstantX/SD3.5-Large-IP-Adapter offline.
    """
    from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0
    from diffusers.models.embeddings import IPAdapterTimeImageProjection
    from safetensors.torch import save_file
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    config = json.loads((Path(checkpoint) / "transformer" / "config.json").read_text())
    width, resampler_width, encoder_width = config["num_attention_heads"] * config["attention_head_dim"], 48, 40
    torch.manual_seed(seed)
    encoder = SiglipVisionModel(
        SiglipVisionConfig(hidden_size=encoder_width, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=image_size, patch_size=image_size // 4)
    ).eval()
    resampler = IPAdapterTimeImageProjection(
        embed_dim=encoder_width, output_dim=width, hidden_dim=resampler_width, heads=1, num_queries=8, timestep_in_dim=64
    )  # heads of 64 channels: diffusers' loader reads the heads as to_q's width / 64
    state = {f"image_proj.{instantx_resampler_key(key)}": value for key, value in resampler.state_dict().items()}
    for block in range(config["num_layers"]):
        processor = SD3IPAdapterJointAttnProcessor2_0(hidden_size=width, ip_hidden_states_dim=width, head_dim=config["attention_head_dim"], timesteps_emb_dim=resampler_width)
        with torch.no_grad():
            for name, parameter in processor.named_parameters():  # norms start at ones and zeros: make them matter
                parameter.add_(torch.randn_like(parameter) * 0.3)
        state.update({f"ip_adapter.{block}.{key}": value for key, value in processor.state_dict().items()})
    with staged_dir(Path(output_dir)) as staging:
        save_file({key: value.contiguous() for key, value in state.items()}, str(staging / "ip-adapter.safetensors"))
        encoder.save_pretrained(staging / "image_encoder")
        SiglipImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(staging / "image_encoder")
    return Path(output_dir)
