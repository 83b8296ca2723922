"""The benchmark's model: an SD3-Medium-shaped checkpoint, its conversions, and the FLOPs of its transformer.

No download: the checkpoint is random-weight, built from configs with SD3 Medium's real widths (patch 2, 16
latent channels, 24 heads x 64, joint width 4096, caption projection 1536, pooled 2048, CLIP-L and CLIP-G
text encoders, the real VAE; no T5) and `--layers` transformer blocks (24 = full depth). It is written once
to `--work-dir` and converted there by `convert_sd3` (fp16, int8, int4) and, for int8-hybrid, by
`quantize_sd3` on the fp16 IR with `--calibration-samples` samples (what `convert_sd3(weight_format=
"int8-hybrid")` does after a conversion to fp16 of its own, with `quantize_sd3`'s default count; the table
says "from the fp16 IR"). Each conversion runs in a process of its own whose time and peak RSS are measured
(`convert_task`).
"""

import json
import shutil
import time
from pathlib import Path

from bench_process import peak_rss, rss

# SD3 Medium's shapes (stabilityai/stable-diffusion-3-medium-diffusers, the config.json of each component).
SD3_MEDIUM = {
    "transformer": dict(
        sample_size=128,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        attention_head_dim=64,
        num_attention_heads=24,
        joint_attention_dim=4096,
        caption_projection_dim=1536,
        pooled_projection_dim=2048,  # CLIP-L's 768 + CLIP-G's 1280 pooled projections
        pos_embed_max_size=192,
    ),
    "text_encoder": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768, hidden_act="quick_gelu"),
    "text_encoder_2": dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, projection_dim=1280, hidden_act="gelu"),
    "vae": dict(block_out_channels=(128, 256, 512, 512), latent_channels=16, layers_per_block=2, norm_num_groups=32, sample_size=1024),
    "clip_vocab_size": 49408,
}
# The same structure, tiny (same patch and latent channels): for `--quick`, a smoke run of every code path.
TINY = {
    "transformer": dict(
        SD3_MEDIUM["transformer"],
        sample_size=32,
        attention_head_dim=16,
        num_attention_heads=4,
        joint_attention_dim=128,
        caption_projection_dim=64,
        pooled_projection_dim=80,  # 32 + 48, the tiny CLIPs' projections
        pos_embed_max_size=48,
    ),
    "text_encoder": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32, hidden_act="quick_gelu"),
    "text_encoder_2": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, projection_dim=48, hidden_act="gelu"),
    "vae": dict(block_out_channels=(16, 32), latent_channels=16, layers_per_block=1, norm_num_groups=8, sample_size=64),
    "clip_vocab_size": 1000,
}
SUBMODELS = ("transformer", "text_encoder", "text_encoder_2", "vae_decoder", "vae_encoder")  # the IR size columns


# ----------------------------------------------------------------------------------------------------------
# The checkpoint
# ----------------------------------------------------------------------------------------------------------


def _half(module):
    import torch

    return module.to(torch.float16).eval()  # built in f32 (CPU init), stored in fp16 as the real checkpoint


def _clip_text_encoder(shape: dict, *, vocab_size: int, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        **shape,
        vocab_size=vocab_size,
        max_position_embeddings=77,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return _half(CLIPTextModelWithProjection(config))


def _vae(shape: dict):
    from diffusers import AutoencoderKL

    blocks = len(shape["block_out_channels"])
    vae = AutoencoderKL(
        **shape,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        scaling_factor=1.5305,  # SD3's
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    return _half(vae)


def build_checkpoint(work_dir: Path, *, layers: int, quick: bool = False) -> Path:
    """Write (once) a random-weight SD3 checkpoint of SD3 Medium's shapes with `layers` transformer blocks
    (tiny shapes with `quick`), in diffusers format and fp16, without T5; return its folder."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    from sd3_helper import staged_dir, train_clip_tokenizer

    shapes = TINY if quick else SD3_MEDIUM
    folder = work_dir / (f"tiny-{layers}-layers" if quick else f"sd3-medium-shaped-{layers}-layers")
    if (folder / "model_index.json").is_file():
        return folder

    torch.manual_seed(0)  # the modules below are built in this order, so their random weights are always the same
    tokenizers = {
        "tokenizer": train_clip_tokenizer(vocab_size=600, pad_token="<|endoftext|>"),
        "tokenizer_2": train_clip_tokenizer(vocab_size=600, pad_token="!"),  # SD3's CLIP-G tokenizer pads with "!"
    }
    components = {
        name: _clip_text_encoder(shapes[name], vocab_size=shapes["clip_vocab_size"], tokenizer=tokenizers[tokenizer])
        for name, tokenizer in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))
    }
    components["transformer"] = _half(SD3Transformer2DModel(**shapes["transformer"], num_layers=layers))
    components["vae"] = _vae(shapes["vae"])
    pipeline = StableDiffusion3Pipeline(
        **components,
        **tokenizers,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        text_encoder_3=None,
        tokenizer_3=None,
    )
    with staged_dir(folder) as staging:
        pipeline.save_pretrained(staging)
    return folder


def build_task(task: dict) -> dict:
    """Build (or find) the checkpoint and check that it accepts the run's image size; in a process of its own,
    so that the parent never holds torch models."""
    from sd3_helper import SizeRules

    folder = build_checkpoint(Path(task["work_dir"]), layers=task["layers"], quick=task["quick"])
    configs = {name: json.loads((folder / name / "config.json").read_text()) for name in ("transformer", "vae")}
    rules = SizeRules.from_configs(transformer_config=configs["transformer"], vae_config=configs["vae"])
    try:
        rules.check(height=task["height"], width=task["width"])
    except ValueError as error:
        return {"checkpoint": str(folder), "size_error": str(error)}
    return {"checkpoint": str(folder), "size_error": None}


# ----------------------------------------------------------------------------------------------------------
# Conversions
# ----------------------------------------------------------------------------------------------------------


def convert_task(task: dict) -> dict:
    """Convert the checkpoint to one weight format; time it and report the peak RSS above the imports."""
    import nncf  # noqa: F401  (imported before the baseline, like the others)
    import openvino  # noqa: F401

    from sd3_helper import convert_sd3, quantize_sd3

    output_dir = Path(task["output_dir"])
    shutil.rmtree(output_dir, ignore_errors=True)
    baseline = rss()
    start = time.perf_counter()
    fmt, samples = task["weight_format"], task["calibration_samples"]
    if fmt == "int8-hybrid":  # convert_sd3 takes no sample count: calibrate the fp16 IR with this run's count
        quantize_sd3(task["fp16_dir"], output_dir, num_samples=samples)
        result = {"calibration_samples": samples, "source": "fp16 IR"}
    else:
        convert_sd3(task["checkpoint"], output_dir, load_t5=False, weight_format=fmt)
        result = {"source": "checkpoint"}
    return {"seconds": time.perf_counter() - start, "peak_rss": peak_rss(), "baseline_rss": baseline, **result}


def ir_sizes(folder: Path) -> dict[str, int]:
    """xml + bin bytes of each submodel of an OpenVINO SD3 folder."""
    return {
        sub.name: sum((sub / name).stat().st_size for name in ("openvino_model.xml", "openvino_model.bin"))
        for sub in sorted(folder.iterdir())
        if (sub / "openvino_model.xml").is_file()
    }


# ----------------------------------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------------------------------


def transformer_flops(config: dict, *, height: int, width: int, vae_scale_factor: int, text_tokens: int, batch: int) -> float:
    """FLOPs of one forward of an SD3 (MMDiT) transformer, counting 2 per multiply-add of its matmuls.

    With N image tokens (one per patch), M text tokens (77 CLIP + `max_sequence_length` T5 positions), width
    D = heads x head_dim and L joint blocks, per image:
        patch embedding 2·N·(C·p²)·D, context embedding 2·M·joint_attention_dim·D,
        per block: 24·(N + M)·D² for the q, k, v, out projections and the 4x MLPs of both streams
        (the last block's text stream has only q, k, v: 6·M·D²) and 4·(N + M)²·D for attention,
        output projection 2·N·D·(p²·C_out); the per-image conditioning MLPs and adaLN are counted too.
    Elementwise work (norms, softmax, activations) is left out: it is < 1% here. For the 2-layer model at
    512x512 with 333 text tokens this gives 333.7 GFLOP, equal to a count over the MatMul, Convolution and
    ScaledDotProductAttention shapes of the IR reshaped to those inputs (with max_sequence_length 77, i.e.
    154 text tokens, it gives the ~293 GFLOP quoted in issue 5).
    """
    patch = config["patch_size"]
    width_d = config["num_attention_heads"] * config["attention_head_dim"]
    layers = config["num_layers"]
    n = (height // vae_scale_factor // patch) * (width // vae_scale_factor // patch)
    m = text_tokens
    tokens = n + m
    flops = 2 * n * config["in_channels"] * patch**2 * width_d  # patch embedding
    flops += 2 * m * config["joint_attention_dim"] * width_d  # context embedding
    flops += 2 * (256 * width_d + width_d**2 + config["pooled_projection_dim"] * width_d + width_d**2)  # timestep/text MLPs
    for layer in range(layers):
        last = layer == layers - 1
        flops += 24 * n * width_d**2 + (6 if last else 24) * m * width_d**2
        flops += 4 * tokens**2 * width_d
        flops += 2 * width_d * 6 * width_d + 2 * width_d * (2 if last else 6) * width_d  # adaLN modulation
    flops += 2 * width_d * 2 * width_d + 2 * n * width_d * patch**2 * config["out_channels"]  # norm_out, proj_out
    return float(flops * batch)
