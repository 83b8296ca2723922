"""Issue 27: single-file checkpoints (Stability / ComfyUI layout, with and without the text encoders, SD3 and SD3.5
shaped), GGUF transformers and community LoRA formats (Kohya, ComfyUI), each against diffusers reading the same files.

The files are written from the tiny checkpoints by `single_file_layout.py` (test code, the inverse of diffusers'
own reading). References: diffusers' `from_single_file` of the file (its T5 put in eval mode: diffusers 0.39 leaves
it training, see `test_converted_t5_is_deterministic_where_diffusers_leaves_dropout_on`); for LoRAs, the file with
the LoRA merged into its original weights (`W + scale * alpha / rank * up @ down`), read by `from_single_file`.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import F32, psnr
from single_file_layout import (
    community_lora,
    original_transformer_state_dict,
    save_gguf,
    save_single_file,
    single_file_state_dict,
)

import sd3_helper

GENERATION = dict(prompt="a red fox in the snow", num_inference_steps=3, guidance_scale=5.0, height=64, width=64, output_type="np")
HELPER = Path(__file__).resolve().parents[1] / "sd3_helper.py"
# name -> (tiny family, what the file holds): every part (T5 too), CLIP-L/G without T5, the transformer alone
# (bare ComfyUI keys, the other parts from the base).
SINGLE_FILES = {
    "sd3-with-clip-and-t5": ("sd3", dict(text_encoders=True, t5=True, vae=True)),
    "sd3.5-large-with-clip": ("sd3.5-large", dict(text_encoders=True, t5=False, vae=True)),
    "sd3.5-medium-transformer-only": ("sd3.5-medium", dict(text_encoders=False, t5=False, vae=False)),
}
LORA_SCALE = 0.8
# The original layers a community LoRA adapts: fused qkv of both streams, the last block's context norm and the final
# norm (their halves swap in diffusers), an MLP, an output projection, an embedder, and a layer of each CLIP.
LORA_TARGETS = {
    "transformer": [
        "joint_blocks.0.x_block.attn.qkv",
        "joint_blocks.1.context_block.attn.qkv",
        "joint_blocks.1.context_block.adaLN_modulation.1",
        "joint_blocks.0.context_block.mlp.fc2",
        "joint_blocks.1.x_block.attn.proj",
        "final_layer.adaLN_modulation.1",
        "context_embedder",
    ],
    "text_encoder": ["text_model.encoder.layers.0.self_attn.q_proj"],
    "text_encoder_2": ["text_model.encoder.layers.1.mlp.fc1"],
}


def image(pipeline) -> np.ndarray:
    if hasattr(pipeline, "set_progress_bar_config"):
        pipeline.set_progress_bar_config(disable=True)
    return pipeline(**GENERATION, generator=torch.Generator().manual_seed(0)).images


def diffusers_from_single_file(path: Path, base: Path, **components):
    """diffusers' pipeline of a single file (T5 in eval mode, as it should be), or of `base` with a transformer-only file."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    if components.pop("transformer_only", False):
        transformer = SD3Transformer2DModel.from_single_file(str(path), config=str(base), subfolder="transformer", local_files_only=True, **components)
        return StableDiffusion3Pipeline.from_pretrained(str(base), transformer=transformer)
    if components.pop("t5_from_base", False):  # diffusers refuses a file without T5 unless it is passed
        from transformers import T5EncoderModel

        components["text_encoder_3"] = T5EncoderModel.from_pretrained(str(base), subfolder="text_encoder_3")
    pipeline = StableDiffusion3Pipeline.from_single_file(str(path), config=str(base), local_files_only=True, **components)
    pipeline.text_encoder_3.eval()
    return pipeline


def ours(folder: Path):
    return sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(folder, ov_config=F32)


# ----------------------------------------------------------------------------------------------------------
# Files and conversions, each made once
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single_file_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("single-files")


@pytest.fixture(scope="module")
def single_files(tiny_checkpoints, single_file_dir):
    """`single_files(name)` -> (the single file of `SINGLE_FILES[name]`, its tiny base checkpoint)."""
    from diffusers import StableDiffusion3Pipeline

    def build(name: str) -> tuple[Path, Path]:
        family, parts = SINGLE_FILES[name]
        base = tiny_checkpoints(family=family)
        path = single_file_dir / f"{name}.safetensors"
        if not path.exists():
            pipeline = StableDiffusion3Pipeline.from_pretrained(str(base))
            if parts["text_encoders"] or parts["vae"]:
                save_single_file(single_file_state_dict(pipeline, **parts), path)
            else:
                save_single_file(original_transformer_state_dict(pipeline.transformer), path)
        return path, base

    return build


@pytest.fixture(scope="module")
def single_file_conversions(single_files, single_file_dir):
    """`single_file_conversions(name, **options)` -> the fp32 conversion of `single_files(name)` (made once)."""
    made = {}

    def convert(name: str, **options) -> Path:
        key = (name, json.dumps(options, sort_keys=True, default=str))
        if key not in made:
            path, base = single_files(name)
            output_dir = single_file_dir / f"converted-{name}-{len(made)}"
            made[key] = sd3_helper.convert_sd3(path, output_dir, config=base, weight_format="fp32", **options)
        return made[key]

    return convert


# ----------------------------------------------------------------------------------------------------------
# Single files
# ----------------------------------------------------------------------------------------------------------


def test_test_files_hold_the_checkpoints_weights_as_diffusers_reads_them(single_files):
    """The inverse mapping of this test code, against diffusers' forward one: every weight comes back unchanged."""
    from diffusers import StableDiffusion3Pipeline

    path, base = single_files("sd3-with-clip-and-t5")
    original = StableDiffusion3Pipeline.from_pretrained(str(base))
    read = StableDiffusion3Pipeline.from_single_file(str(path), config=str(base), local_files_only=True)
    for name in ("transformer", "vae", "text_encoder_2", "text_encoder_3"):
        expected, actual = getattr(original, name).state_dict(), getattr(read, name).state_dict()
        assert expected.keys() == actual.keys()
        assert all(torch.equal(expected[key], actual[key]) for key in expected), name


@pytest.mark.parametrize("name", list(SINGLE_FILES))
def test_single_file_conversion_matches_diffusers_from_single_file(name, single_files, single_file_conversions):
    path, base = single_files(name)
    parts = SINGLE_FILES[name][1]
    transformer_only = not parts["vae"]
    reference = image(diffusers_from_single_file(path, base, transformer_only=transformer_only, t5_from_base=not parts["t5"]))
    converted = single_file_conversions(name)
    difference = np.abs(image(ours(converted)) - reference).max()
    print(f"\n{name}: ours vs diffusers' from_single_file {difference:.2e}")
    assert difference <= 1e-3
    record = json.loads((converted / "openvino_conversion.json").read_text())
    assert len(record["source"]["file_sha256"]) == 64 and record["source"]["path"] == str(path.resolve())
    assert len(record["source"]["config"]["fingerprint"]) == 64  # the base is part of the source
    assert (converted / "text_encoder_3").is_dir()  # from the file, or from the base when the file has none


def test_converted_t5_is_deterministic_where_diffusers_leaves_dropout_on(single_files, single_file_conversions):
    import openvino as ov
    from diffusers import StableDiffusion3Pipeline

    path, base = single_files("sd3-with-clip-and-t5")
    reference = StableDiffusion3Pipeline.from_single_file(str(path), config=str(base), local_files_only=True).text_encoder_3
    tokens = torch.tensor([[5, 9, 13, 2, 0, 0]])
    assert reference.training  # diffusers 0.39: T5 from a single file stays in training mode (dropout active)
    with torch.no_grad():
        training_runs = [reference(tokens)[0] for _ in range(2)]
        expected = reference.eval()(tokens)[0].numpy()
    assert not torch.equal(*training_runs)  # so diffusers' images change run to run
    compiled = ov.Core().compile_model(single_file_conversions("sd3-with-clip-and-t5") / "text_encoder_3" / "openvino_model.xml", "CPU", F32)
    runs = [next(iter(compiled(tokens.numpy()).values())) for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_allclose(runs[0], expected, atol=1e-4)


def test_a_converted_single_file_is_kept_and_another_file_is_refused(single_files, single_file_conversions, tmp_path):
    converted = single_file_conversions("sd3-with-clip-and-t5")
    path, base = single_files("sd3-with-clip-and-t5")
    written = {file: file.stat().st_mtime_ns for file in converted.rglob("openvino_model.*")}
    result = subprocess.run(
        [sys.executable, str(HELPER), "convert", str(path), str(converted), "--config", str(base), "--weight-format", "fp32"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert {file: file.stat().st_mtime_ns for file in converted.rglob("openvino_model.*")} == written  # nothing converted again
    changed = tmp_path / "changed.safetensors"
    from safetensors.torch import load_file

    state = load_file(str(path))
    state["first_stage_model.decoder.conv_out.bias"] = state["first_stage_model.decoder.conv_out.bias"] + 1
    save_single_file(state, changed)
    with pytest.raises(ValueError, match="file_sha256"):
        sd3_helper.convert_sd3(changed, converted, config=base, weight_format="fp32")


# ----------------------------------------------------------------------------------------------------------
# GGUF transformers
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("quant_type", "min_psnr"), [("Q8_0", 55.0), ("Q4_0", 35.0)])
def test_gguf_transformer_matches_diffusers_gguf_and_states_its_loss(quant_type, min_psnr, tiny_checkpoint, tmp_path, single_file_conversions):
    from diffusers import GGUFQuantizationConfig, StableDiffusion3Pipeline

    original = StableDiffusion3Pipeline.from_pretrained(str(tiny_checkpoint))
    path = save_gguf(original_transformer_state_dict(original.transformer), tmp_path / f"transformer-{quant_type}.gguf", quant_type=quant_type)
    gguf_config = GGUFQuantizationConfig(compute_dtype=torch.float32)
    reference = image(diffusers_from_single_file(path, tiny_checkpoint, transformer_only=True, quantization_config=gguf_config))
    converted = sd3_helper.convert_sd3(path, tmp_path / "converted", config=tiny_checkpoint, weight_format="fp32")
    ours_image, unquantized = image(ours(converted)), image(original)
    difference, loss = np.abs(ours_image - reference).max(), psnr(unquantized, ours_image)
    print(f"\nGGUF {quant_type}: ours vs diffusers' GGUF {difference:.2e}; against the unquantized model {loss:.1f} dB")
    assert difference <= 1e-3
    assert min_psnr < loss < 100  # the stated loss: measured Q8_0 66.6 dB, Q4_0 42.5 dB (docs/single-file.md)


# ----------------------------------------------------------------------------------------------------------
# Community LoRA formats
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def community_loras(single_files, single_file_dir):
    """`community_loras(lora_format)` -> (LoRA file, merged-weights reference image)."""
    from safetensors.torch import load_file

    made = {}

    def build(lora_format: str) -> tuple[Path, np.ndarray]:
        if lora_format not in made:
            path, base = single_files("sd3-with-clip-and-t5")
            lora, merged = community_lora(load_file(str(path)), LORA_TARGETS, lora_format=lora_format, rank=4, alpha=2.0, scale=LORA_SCALE, seed=3)
            lora_path = save_single_file(lora, single_file_dir / f"lora-{lora_format}.safetensors")
            merged_path = save_single_file(merged, single_file_dir / f"merged-{lora_format}.safetensors")
            made[lora_format] = lora_path, image(diffusers_from_single_file(merged_path, base))
        return made[lora_format]

    return build


@pytest.mark.parametrize("lora_format", ["kohya", "original"])
def test_community_lora_at_run_time_matches_the_merged_weights(lora_format, community_loras, single_file_conversions):
    lora_path, reference = community_loras(lora_format)
    pipeline = ours(single_file_conversions("sd3-with-clip-and-t5"))
    base = image(pipeline)
    pipeline.load_lora_weights(str(lora_path), adapter_name="community")
    pipeline.set_adapters(["community"], [LORA_SCALE])
    difference, change = np.abs(image(pipeline) - reference).max(), np.abs(base - reference).max()
    print(f"\n{lora_format} LoRA at run time: ours vs merged weights {difference:.2e} (the LoRA changes the image by {change:.3f})")
    assert difference <= 1e-3 and change > 0.05


@pytest.mark.parametrize("lora_format", ["kohya", "original"])
def test_community_lora_fused_at_conversion_matches_the_merged_weights(lora_format, community_loras, single_file_conversions):
    lora_path, reference = community_loras(lora_format)
    fused = single_file_conversions("sd3-with-clip-and-t5", lora=[(str(lora_path), LORA_SCALE)])
    difference = np.abs(image(ours(fused)) - reference).max()
    print(f"\n{lora_format} LoRA fused at conversion: ours vs merged weights {difference:.2e}")
    assert difference <= 1e-3


def test_kohya_lora_on_sd35_medium_dual_attention_blocks_matches_the_merged_weights(single_files, single_file_conversions, single_file_dir):
    """SD3.5 Medium's second attention (`attn2`) and qk-norm blocks, the last of its 10 tiny blocks included."""
    from safetensors.torch import load_file

    path, base = single_files("sd3.5-medium-transformer-only")
    targets = {"transformer": ["joint_blocks.0.x_block.attn2.qkv", "joint_blocks.2.x_block.attn2.proj", "joint_blocks.9.context_block.attn.qkv",
                               "joint_blocks.9.context_block.adaLN_modulation.1", "joint_blocks.4.x_block.mlp.fc1"]}  # fmt: skip
    lora, merged = community_lora(load_file(str(path)), targets, lora_format="kohya", rank=2, alpha=None, scale=LORA_SCALE, seed=5)
    lora_path = save_single_file(lora, single_file_dir / "lora-kohya-sd3.5-medium.safetensors")
    merged_path = save_single_file(merged, single_file_dir / "merged-sd3.5-medium.safetensors")
    reference = image(diffusers_from_single_file(merged_path, base, transformer_only=True))
    pipeline = ours(single_file_conversions("sd3.5-medium-transformer-only"))
    pipeline.load_lora_weights(str(lora_path), adapter_name="kohya")
    pipeline.set_adapters(["kohya"], [LORA_SCALE])
    difference = np.abs(image(pipeline) - reference).max()
    print(f"\nKohya LoRA on SD3.5 Medium's dual-attention blocks: ours vs merged weights {difference:.2e}")
    assert difference <= 1e-3


def test_an_interrupted_single_file_conversion_resumes(single_files, tmp_path, monkeypatch, capsys):
    from sd3_openvino.export import conversion

    path, base = single_files("sd3.5-large-with-clip")
    output_dir = tmp_path / "interrupted"
    real_compress = conversion.compress_weights

    def fail_on_clip_g(ov_model, *, submodel, weight_format):
        if submodel == "text_encoder_2":
            raise KeyboardInterrupt("simulated kill in the middle of the conversion")
        return real_compress(ov_model, submodel=submodel, weight_format=weight_format)

    monkeypatch.setattr(conversion, "compress_weights", fail_on_clip_g)
    with pytest.raises(KeyboardInterrupt):
        sd3_helper.convert_sd3(path, output_dir, config=base, load_t5=False, weight_format="fp16")
    assert conversion.is_converted(output_dir / "transformer") and not (output_dir / "model_index.json").exists()
    monkeypatch.setattr(conversion, "compress_weights", real_compress)
    capsys.readouterr()
    sd3_helper.convert_sd3(path, output_dir, config=base, load_t5=False, weight_format="fp16")
    assert "transformer: already converted, skipped" in capsys.readouterr().out
    pipeline = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(output_dir)
    pipeline.set_progress_bar_config(disable=True)
    assert pipeline("a cat", num_inference_steps=1, height=64, width=64, output_type="np").images.shape == (1, 64, 64, 3)
    assert not list(output_dir.glob(".*"))  # no staging folder left
