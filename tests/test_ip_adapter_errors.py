"""IP-Adapter inputs checked by name, without models (fast tier): adapter files and folders, adapters made for another
transformer, scales, image prompts and their embeddings, and the image encoder's preprocessing against transformers'."""

import types

import numpy as np
import pytest
import torch
from PIL import Image

from sd3_openvino.export.ip_adapter import (
    build_attention_processors,
    build_image_projection,
    check_resampler_fits,
    image_encoder_location,
    read_ip_adapter_state_dict,
)
from sd3_openvino.runtime.ip_adapter import check_ip_adapter_scale, check_no_dual_attention, preprocess_ip_image
from sd3_openvino.runtime.ip_adapter_api import IPAdapterMixin, converted_ip_adapter_dir

LARGE = {"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 8}  # width 16


def processor_weights(*, blocks: int = 2, width: int = 16, head_dim: int = 8, temb: int = 12) -> dict:
    from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0

    state = {}
    for block in range(blocks):
        processor = SD3IPAdapterJointAttnProcessor2_0(hidden_size=width, ip_hidden_states_dim=width, head_dim=head_dim, timesteps_emb_dim=temb)
        state.update({f"{block}.{key}": value for key, value in processor.state_dict().items()})
    return state


def resampler(*, embed_dim: int = 10, output_dim: int = 16, hidden_dim: int = 12):
    from diffusers.models.embeddings import IPAdapterTimeImageProjection

    return IPAdapterTimeImageProjection(embed_dim=embed_dim, output_dim=output_dim, hidden_dim=hidden_dim, heads=1, num_queries=4, timestep_in_dim=8)


# -- The adapter's files ------------------------------------------------------------------------------------------


def test_a_folder_without_the_weight_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"holds no `ip-adapter.safetensors`.*InstantX's is 'ip-adapter.bin'"):
        read_ip_adapter_state_dict(tmp_path)


def test_a_file_without_adapter_weights_is_named(tmp_path):
    from safetensors.torch import save_file

    save_file({"unet.weight": torch.zeros(2)}, str(tmp_path / "ip-adapter.safetensors"))
    with pytest.raises(ValueError, match="is not an SD3 IP-Adapter: it has no `image_proj` and `ip_adapter` weights"):
        read_ip_adapter_state_dict(tmp_path)


def test_a_wrong_source_type_is_named():
    with pytest.raises(TypeError, match="has to be a folder, a file, a hub id or a state dict but is int"):
        read_ip_adapter_state_dict(3)


def test_a_bin_file_is_read_as_diffusers_reads_it(tmp_path):
    state = {"image_proj": {"latents": torch.zeros(1, 4, 12)}, "ip_adapter": {"0.to_k_ip.weight": torch.zeros(16, 16)}}
    torch.save(state, tmp_path / "ip-adapter.bin")
    read = read_ip_adapter_state_dict(tmp_path, weight_name="ip-adapter.bin")
    assert set(read) == {"image_proj", "ip_adapter"} and read["ip_adapter"]["0.to_k_ip.weight"].shape == (16, 16)


# -- Where the image encoder is (diffusers' meaning, without its TypeError) -----------------------------------------


def test_a_folder_name_is_looked_for_beside_the_weights(tmp_path):
    (tmp_path / "sub" / "image_encoder").mkdir(parents=True)
    assert image_encoder_location(tmp_path, subfolder="sub", image_encoder_folder="image_encoder") == (str(tmp_path / "sub" / "image_encoder"), None)
    assert image_encoder_location(tmp_path, subfolder=None, image_encoder_folder=None) is None


def test_a_missing_encoder_folder_says_what_to_pass(tmp_path):
    # diffusers: `Path(None, "image_encoder")` -> a bare TypeError
    with pytest.raises(FileNotFoundError, match=r"there is no `.*image_encoder`\. Pass the SigLIP image encoder's folder or hub id"):
        image_encoder_location(tmp_path, subfolder=None, image_encoder_folder="image_encoder")


def test_a_folder_name_with_a_state_dict_says_what_to_pass():
    with pytest.raises(ValueError, match="the adapter is a state dict. Pass the image encoder's own folder or hub id"):
        image_encoder_location({"image_proj": {}}, subfolder=None, image_encoder_folder="image_encoder")


def test_a_hub_id_for_the_encoder_is_kept_and_junk_is_refused(tmp_path):
    assert image_encoder_location(tmp_path, subfolder=None, image_encoder_folder="google/siglip-so400m-patch14-384") == ("google/siglip-so400m-patch14-384", None)
    with pytest.raises(FileNotFoundError, match="is neither a folder nor a hub id"):
        image_encoder_location(tmp_path, subfolder=None, image_encoder_folder="no/such/folder/here")
    with pytest.raises(TypeError, match="`image_encoder_folder` has to be a str"):
        image_encoder_location(tmp_path, subfolder=None, image_encoder_folder=3)


# -- An adapter made for another transformer ---------------------------------------------------------------------


def test_an_adapter_with_other_block_count_is_refused():
    with pytest.raises(ValueError, match="has image attention for 3 blocks, this transformer has 2: it was made for another model"):
        build_attention_processors(processor_weights(blocks=3), transformer_config=LARGE)


def test_an_adapter_of_another_width_is_refused():
    with pytest.raises(ValueError, match=r"has shape \(24, 24\); this transformer's attention is 16 wide, so it needs \(16, 16\)"):
        build_attention_processors(processor_weights(width=24), transformer_config=LARGE)


def test_a_fitting_adapter_builds_diffusers_processors():
    processors = build_attention_processors(processor_weights(), transformer_config=LARGE)
    assert len(processors) == 2 and processors[0].to_k_ip.weight.shape == (16, 16) and not processors[0].training


def test_resampler_and_encoder_widths_are_checked():
    processors = build_attention_processors(processor_weights(), transformer_config=LARGE)
    check_resampler_fits(resampler(), processors, image_encoder_width=10)
    with pytest.raises(ValueError, match="resampler gives features 24 wide.*from different adapters"):
        check_resampler_fits(resampler(output_dim=24), processors, image_encoder_width=10)
    with pytest.raises(ValueError, match="image encoder gives features 11 wide, but the IP-Adapter's resampler reads 10"):
        check_resampler_fits(resampler(), processors, image_encoder_width=11)


def test_a_resampler_in_instantx_layout_is_read_with_diffusers_conversion():
    from diffusers.models.embeddings import IPAdapterTimeImageProjection

    from sd3_openvino.export.tiny_model import INSTANTX_RESAMPLER_NAMES

    original = IPAdapterTimeImageProjection(embed_dim=10, output_dim=16, hidden_dim=12, heads=1, num_queries=4, timestep_in_dim=8)
    state = {}
    for key, value in original.state_dict().items():
        for diffusers_name, instantx_name in INSTANTX_RESAMPLER_NAMES.items():
            key = key.replace(f".{diffusers_name}.", f".{instantx_name}.")
        state[key] = value
    built = build_image_projection(state)
    for name, value in original.state_dict().items():
        torch.testing.assert_close(built.state_dict()[name], value, rtol=0, atol=0)
    with pytest.raises(ValueError, match="not an SD3 IP-Adapter resampler"):
        build_image_projection({"latents": torch.zeros(1, 4, 12)})


def test_dual_attention_blocks_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"has dual-attention blocks \[0, 1\].*Use an SD3.5 Large .*InstantX/SD3.5-Large-IP-Adapter"):
        check_no_dual_attention({"dual_attention_layers": [0, 1]}, where=tmp_path)
    check_no_dual_attention({"dual_attention_layers": []}, where=tmp_path)


# -- Scales, image prompts, embeddings -----------------------------------------------------------------------------


@pytest.mark.parametrize("scale, error, message", [
    (float("nan"), ValueError, "finite number"), (float("inf"), ValueError, "finite number"),
    ("0.5", TypeError, "has to be a float"), (True, TypeError, "has to be a float"),
])  # fmt: skip
def test_bad_scales_are_named(scale, error, message):
    with pytest.raises(error, match=message):
        check_ip_adapter_scale(scale)
    assert check_ip_adapter_scale(np.float32(0.25)) == 0.25


def call_checks(**kwargs):
    """`check_ip_adapter_inputs` of a pipeline with an adapter whose image features are 40 wide."""
    pipe = types.SimpleNamespace(ip_adapter=types.SimpleNamespace(embed_dim=40))
    defaults = dict(ip_adapter_image=None, ip_adapter_image_embeds=None, batch_size=2, do_classifier_free_guidance=True)
    IPAdapterMixin.check_ip_adapter_inputs(pipe, **{**defaults, **kwargs})


IMAGE = Image.new("RGB", (8, 8))
CALL_CASES = {
    "both": (dict(ip_adapter_image=IMAGE, ip_adapter_image_embeds=np.zeros((2, 3, 40))), ValueError, "not both"),
    "three-images-two-prompts": (dict(ip_adapter_image=[IMAGE] * 3), ValueError, r"holds 3 images for 2 prompt\(s\)"),
    "float-array": (dict(ip_adapter_image=np.zeros((8, 8, 3), np.float32)), TypeError, "holds ndarray of dtype float32"),
    "path": (dict(ip_adapter_image="cat.png"), TypeError, "holds str"),
    "embeds-odd-under-guidance": (dict(ip_adapter_image_embeds=np.zeros((3, 5, 40))), ValueError, r"\[negative, positive\] halves.*n 2 or 4"),
    "embeds-width": (dict(ip_adapter_image_embeds=np.zeros((2, 5, 41))), ValueError, r"\(n, tokens, 40\).*shape \(2, 5, 41\)"),
    "embeds-nan": (dict(ip_adapter_image_embeds=np.full((2, 5, 40), np.nan)), ValueError, "NaN or infinite"),
    "embeds-unguided-count": (dict(ip_adapter_image_embeds=np.zeros((3, 5, 40)), do_classifier_free_guidance=False), ValueError, "n 1 or 2"),
}


@pytest.mark.parametrize("kwargs, error, message", CALL_CASES.values(), ids=CALL_CASES.keys())
def test_image_prompt_errors_name_the_argument(kwargs, error, message):
    with pytest.raises(error, match=message):
        call_checks(**kwargs)


def test_good_image_prompts_pass():
    call_checks(ip_adapter_image=IMAGE)
    call_checks(ip_adapter_image=[IMAGE, np.zeros((8, 8, 3), np.uint8)])
    call_checks(ip_adapter_image_embeds=torch.zeros(4, 5, 40))


def test_a_state_dict_needs_an_output_dir(tmp_path):
    with pytest.raises(ValueError, match="pass `output_dir`"):
        converted_ip_adapter_dir(tmp_path, {"image_proj": {}}, weight_name="ip-adapter.safetensors", subfolder=None)
    folder = converted_ip_adapter_dir(tmp_path, "InstantX/SD3.5-Large-IP-Adapter", weight_name="ip-adapter.bin", subfolder=None)
    assert folder.parent == tmp_path / "ip_adapters" and "/" not in folder.name and "InstantX" in folder.name


# -- The image encoder's preprocessing ------------------------------------------------------------------------------


def test_preprocessing_matches_transformers_siglip_processor():
    """Ours (PIL) equals transformers' PIL-backend SigLIP processor; its default torchvision backend resizes with
    another bicubic filter, a few grey levels apart."""
    from transformers import SiglipImageProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((50, 70, 3)) * 255).astype(np.uint8))
    size = {"height": 32, "width": 32}
    ours = preprocess_ip_image(image, preprocessing=SiglipImageProcessorPil(size=size).to_dict())
    theirs_pil = SiglipImageProcessorPil(size=size)(image, return_tensors="np").pixel_values[0]
    theirs_default = SiglipImageProcessor(size=size)(image, return_tensors="np").pixel_values[0]
    assert ours.shape == (3, 32, 32) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs_pil, atol=1e-6)
    assert np.abs(ours - theirs_default).max() < 0.1  # in [-1, 1] units: under 13 grey levels, noise-like input
    gray = preprocess_ip_image(image.convert("L"), preprocessing=SiglipImageProcessorPil(size=size).to_dict())
    assert gray.shape == (3, 32, 32)
