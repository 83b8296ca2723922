"""IP-Adapter against diffusers' `SD3IPAdapterMixin` on the tiny SD3.5-Large-shaped model with a tiny InstantX-layout
adapter: text-to-image, image-to-image, inpainting and ControlNet at scales 0 / 0.6 / 1, and what loading one does to the
folder, the graph, other adapters and other runtimes.

diffusers' reference with one line fixed: its transformer pops `ip_adapter_image_embeds` from the pipeline's
`joint_attention_kwargs` on the first step and every later step reuses step 0's resampled features and timestep
embedding; InstantX's pipeline (and ours) run the timestep-aware resampler every step. `per_step_embeds` puts the
embeddings back after each step, so diffusers resamples every step too (one step needs no fix: checked below)."""

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

import sd3_helper
from conftest import F32
from test_image_pipelines import fix_inpaint_decode, test_image, test_mask

PARITY_ATOL = 1e-3  # latents, f32
STEPS = 3
SIZE = dict(height=64, width=64)
SCALES = (0.0, 0.6, 1.0)


def prompt_image(seed: int) -> Image.Image:
    """An image prompt at the tiny SigLIP's own size (32 px: no resize, so both sides see the same pixels)."""
    return test_image(seed, height=32, width=32)


@pytest.fixture(scope="session")
def reference(tiny_large_checkpoint, tiny_ip_adapter_source):
    """diffusers' text-to-image pipeline with the tiny adapter loaded (fp32)."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_large_checkpoint)
    pipe.load_ip_adapter(tiny_ip_adapter_source, image_encoder_folder=str(tiny_ip_adapter_source / "image_encoder"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def ours(ov_large_fp32, ov_ip_adapter):
    pipe = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(ov_large_fp32, ov_config=F32)
    pipe.load_ip_adapter(ov_ip_adapter)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def per_step_embeds(pipe, *, image, batch: int, guided: bool):
    """A `callback_on_step_end` that gives diffusers' transformer the image embeddings again for the next step."""
    embeds = pipe.prepare_ip_adapter_image_embeds(image, None, "cpu", batch, guided)

    def callback(pipeline, step, timestep, callback_kwargs):
        pipeline._joint_attention_kwargs = {"ip_adapter_image_embeds": embeds}
        return callback_kwargs

    return callback


def latents_for(batch: int, *, channels: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, channels, 32, 32, generator=torch.Generator().manual_seed(seed))


def run_pair(reference_pipe, our_pipe, *, scale: float, image, num_images: int, **kwargs):
    """(diffusers', ours) latents of one call with the image prompt `image` at `scale`."""
    reference_pipe.set_ip_adapter_scale(scale)
    our_pipe.set_ip_adapter_scale(scale)
    guided = kwargs.get("guidance_scale", 7.0) > 1.0
    arguments = dict(num_inference_steps=STEPS, output_type="latent", ip_adapter_image=image, **kwargs)
    callback = per_step_embeds(reference_pipe, image=image, batch=num_images, guided=guided) if scale else None
    expected = reference_pipe(**arguments, callback_on_step_end=callback).images.numpy()
    actual = our_pipe(**{**arguments, **{key: as_numpy(value) for key, value in arguments.items()}}, taylorseer=None).images
    return expected, actual


def as_numpy(value):
    return value.numpy() if isinstance(value, torch.Tensor) else value


TEXT_TO_IMAGE_CASES = {
    "two-images-per-prompt-guided": dict(prompt="a cat", num_images_per_prompt=2, guidance_scale=4.0),
    "two-prompts-unguided": dict(prompt=["a cat", "a dog"], guidance_scale=1.0),
}


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("image_seed", [0, 1], ids=["image-a", "image-b"])
@pytest.mark.parametrize("case", TEXT_TO_IMAGE_CASES.values(), ids=TEXT_TO_IMAGE_CASES.keys())
def test_text_to_image_matches_diffusers(reference, ours, case, image_seed, scale):
    num_images = 2
    expected, actual = run_pair(reference, ours, scale=scale, image=prompt_image(image_seed), num_images=num_images, latents=latents_for(num_images), **SIZE, **case)
    assert actual.shape == expected.shape == (num_images, 4, 32, 32) and actual.dtype == np.float32
    assert np.abs(actual - expected).max() <= PARITY_ATOL


def test_the_image_prompt_changes_the_image_with_the_scale(ours):
    """Scale 0 is the text-only image exactly; 0.6 and 1 move away from it, 1 further."""
    arguments = dict(prompt="a cat", num_inference_steps=STEPS, output_type="latent", latents=latents_for(1).numpy(), taylorseer=None, **SIZE)
    ours.set_ip_adapter_scale(0.5)
    text_only = ours(**arguments).images
    differences = []
    for scale in SCALES:
        ours.set_ip_adapter_scale(scale)
        differences.append(np.abs(ours(**arguments, ip_adapter_image=prompt_image(0)).images - text_only).max())
    assert differences[0] == 0.0 and 0.0 < differences[1] < differences[2]


def test_one_step_matches_diffusers_without_the_fix(reference, ours):
    """On the first step diffusers resamples with that step's timestep, as we do: no callback needed."""
    reference.set_ip_adapter_scale(0.6)
    ours.set_ip_adapter_scale(0.6)
    arguments = dict(prompt="a cat", num_inference_steps=1, output_type="latent", ip_adapter_image=prompt_image(0), **SIZE)
    expected = reference(**arguments, latents=latents_for(1)).images.numpy()
    actual = ours(**arguments, latents=latents_for(1).numpy(), taylorseer=None).images
    assert np.abs(actual - expected).max() <= PARITY_ATOL


def test_one_image_per_prompt_is_each_prompt_with_its_image(ours):
    """Two prompts with two image prompts (diffusers takes one image per call) = each prompt alone with its image."""
    ours.set_ip_adapter_scale(0.8)
    latents = latents_for(2).numpy()
    arguments = dict(num_inference_steps=STEPS, output_type="latent", guidance_scale=4.0, taylorseer=None, **SIZE)
    both = ours(prompt=["a cat", "a dog"], ip_adapter_image=[prompt_image(0), prompt_image(1)], latents=latents, **arguments).images
    for index, prompt in enumerate(["a cat", "a dog"]):
        alone = ours(prompt=prompt, ip_adapter_image=prompt_image(index), latents=latents[index : index + 1], **arguments).images
        assert np.abs(both[index] - alone[0]).max() <= 1e-5


def test_embeds_give_what_the_image_gives(ours):
    """`ip_adapter_image_embeds` ([negative, positive] under guidance) give the image prompt's image."""
    ours.set_ip_adapter_scale(0.6)
    arguments = dict(prompt="a cat", num_inference_steps=STEPS, output_type="latent", latents=latents_for(1).numpy(), taylorseer=None, **SIZE)
    from_image = ours(**arguments, ip_adapter_image=prompt_image(0)).images
    embeds = ours.encode_ip_adapter_image(prompt_image(0))
    from_embeds = ours(**arguments, ip_adapter_image_embeds=np.concatenate([np.zeros_like(embeds), embeds])).images
    np.testing.assert_array_equal(from_embeds, from_image)


def test_each_image_is_encoded_once(ours):
    ours.set_ip_adapter_scale(0.6)
    image, cache = prompt_image(5), ours.ip_adapter.features
    misses = cache.misses
    for prompt in ("a cat", "a dog"):
        ours(prompt=prompt, num_inference_steps=2, ip_adapter_image=image, output_type="latent", **SIZE)
        metrics = ours.get_performance_metrics()
        assert len(metrics.image_encoder_times) == (1 if prompt == "a cat" else 0)
        assert len(metrics.image_projection_times) == 2 * 1  # the resampler: once a step
    assert cache.misses == misses + 1 and cache.hits >= 1


# -- Image-to-image, inpainting, ControlNet -----------------------------------------------------------------------


def differences_at_each_scale(reference_pipe, our_pipe, *, image_prompt, num_images: int = 1, **call) -> list[float]:
    """max |ours - diffusers'| of one guided call at each of `SCALES` (diffusers resampling every step: `per_step_embeds`)."""
    differences = []
    for scale in SCALES:
        reference_pipe.set_ip_adapter_scale(scale)
        our_pipe.set_ip_adapter_scale(scale)
        callback = per_step_embeds(reference_pipe, image=image_prompt, batch=num_images, guided=True) if scale else None
        outputs = [
            as_numpy(pipe(**call, generator=torch.Generator().manual_seed(3), ip_adapter_image=image_prompt, **extra).images)
            for pipe, extra in ((reference_pipe, dict(callback_on_step_end=callback)), (our_pipe, dict(taylorseer=None)))
        ]
        assert outputs[0].shape == outputs[1].shape
        differences.append(float(np.abs(outputs[1] - outputs[0]).max()))
    return differences


def test_image_to_image_matches_diffusers(reference, ours):
    from diffusers import StableDiffusion3Img2ImgPipeline

    reference_img2img = StableDiffusion3Img2ImgPipeline.from_pipe(reference)
    ours_img2img = sd3_helper.OVStableDiffusion3Img2ImgPipeline.from_pipe(ours)
    assert ours_img2img.ip_adapter is ours.ip_adapter  # shared with the graph it is stitched into
    differences = differences_at_each_scale(
        reference_img2img, ours_img2img, image_prompt=prompt_image(1), num_images=2, prompt="a cat", image=test_image(height=64, width=64),
        strength=0.7, num_images_per_prompt=2, guidance_scale=4.0, num_inference_steps=4, output_type="latent",
    )  # fmt: skip
    assert max(differences) <= PARITY_ATOL


def test_inpainting_matches_diffusers(tiny_checkpoints, converted, tiny_models_dir):
    """On the 16-channel tiny variant (diffusers' inpainting needs 16), decoded with `shift_factor` added back."""
    from diffusers import StableDiffusion3InpaintPipeline

    variant = dict(family="sd3.5-large", latent_channels=16)
    checkpoint, model_dir = tiny_checkpoints(**variant), converted("fp32", False, **variant)
    source = sd3_helper.make_tiny_ip_adapter(checkpoint, tiny_models_dir / f"{checkpoint.name}-ip-adapter")
    reference_pipe = StableDiffusion3InpaintPipeline.from_pretrained(checkpoint, text_encoder_3=None, tokenizer_3=None)
    reference_pipe.load_ip_adapter(source, image_encoder_folder=str(source / "image_encoder"))
    fix_inpaint_decode(reference_pipe)
    our_pipe = sd3_helper.OVStableDiffusion3InpaintPipeline.from_pretrained(model_dir, ov_config=F32)
    our_pipe.load_ip_adapter(source)  # converted on first load, into the folder
    for pipe in (reference_pipe, our_pipe):
        pipe.set_progress_bar_config(disable=True)
    differences = differences_at_each_scale(
        reference_pipe, our_pipe, image_prompt=prompt_image(2), prompt="a red ball", image=test_image(height=64, width=64),
        mask_image=test_mask(height=64, width=64), strength=0.9, num_inference_steps=4, output_type="np",
    )  # fmt: skip
    assert max(differences) <= PARITY_ATOL


def test_controlnet_matches_diffusers(tiny_large_checkpoint, converted, tiny_ip_adapter_source, tmp_path):
    from diffusers import SD3ControlNetModel, StableDiffusion3ControlNetPipeline

    from test_controlnet import control_picture, encode_with_mean

    source = sd3_helper.make_tiny_sd3_controlnet(tiny_large_checkpoint, tmp_path / "controlnet", family="sd3.5", num_layers=2)
    folder = sd3_helper.convert_sd3_controlnet(source, tmp_path / "controlnet-ov", weight_format="fp32", base_model=tiny_large_checkpoint)
    our_pipe = sd3_helper.OVStableDiffusion3ControlNetPipeline.from_pretrained(converted("fp32", False, family="sd3.5-large"), controlnet=folder, ov_config=F32)
    our_pipe.load_ip_adapter(tiny_ip_adapter_source)
    reference_pipe = StableDiffusion3ControlNetPipeline.from_pretrained(
        tiny_large_checkpoint, controlnet=SD3ControlNetModel.from_pretrained(source), text_encoder_3=None, tokenizer_3=None
    )
    reference_pipe.load_ip_adapter(tiny_ip_adapter_source, image_encoder_folder=str(tiny_ip_adapter_source / "image_encoder"))
    reference_pipe = encode_with_mean(reference_pipe)
    differences = differences_at_each_scale(
        reference_pipe, our_pipe, image_prompt=prompt_image(3), prompt="a cat", control_image=control_picture(0),
        controlnet_conditioning_scale=0.7, num_inference_steps=STEPS, output_type="np", height=32, width=48,
    )  # fmt: skip
    assert max(differences) <= PARITY_ATOL


# -- The graph, the folder, and everything else that runs on it ---------------------------------------------------


def file_digests(folder) -> dict:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted((folder / "transformer").iterdir())}


def test_unloading_gives_the_converted_graph_back(ov_large_fp32, ov_ip_adapter):
    pipe = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(ov_large_fp32, ov_config=F32)
    arguments = dict(prompt="a cat", num_inference_steps=2, output_type="latent", latents=latents_for(1).numpy(), taylorseer=None, **SIZE)
    before, inputs = pipe(**arguments).images, [i.get_any_name() for i in pipe.transformer.model.inputs]
    pipe.load_ip_adapter(ov_ip_adapter)
    assert [i.get_any_name() for i in pipe.transformer.model.inputs] == inputs + ["ip_hidden_states", "ip_temb", "ip_scale"]
    loaded_without_image = pipe(**arguments).images
    pipe.unload_ip_adapter()
    assert pipe.ip_adapter is None and [i.get_any_name() for i in pipe.transformer.model.inputs] == inputs
    np.testing.assert_array_equal(pipe(**arguments).images, before)
    np.testing.assert_allclose(loaded_without_image, before, atol=1e-6)  # scale-0 inputs add nothing


def test_loading_a_source_converts_it_once_into_the_folder(ov_large_fp32, tiny_ip_adapter_source, ov_ip_adapter):
    digests = file_digests(ov_large_fp32)
    pipe = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(ov_large_fp32)
    written = (ov_ip_adapter / "attention" / "openvino_model.xml").stat().st_mtime_ns
    pipe.load_ip_adapter(tiny_ip_adapter_source)  # the fixture converted it where this looks: nothing is converted again
    assert pipe.ip_adapter.path == ov_ip_adapter and (ov_ip_adapter / "attention" / "openvino_model.xml").stat().st_mtime_ns == written
    assert file_digests(ov_large_fp32) == digests  # the transformer IR is never rewritten


def test_genai_and_optimum_load_the_folder_with_an_adapter_beside_it_unchanged(ov_large_fp32, ov_ip_adapter):
    """The adapter's folder sits in `ip_adapters/` of the SD3 folder; the other runtimes load the folder and give the
    image our pipeline gives without the adapter."""
    import openvino_genai
    from optimum.intel import OVStableDiffusion3Pipeline as OptimumPipeline

    ours_pipe = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(ov_large_fp32, ov_config=F32)
    ours_image = ours_pipe("a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(1), output_type="np", taylorseer=None, **SIZE).images
    optimum = OptimumPipeline.from_pretrained(ov_large_fp32, ov_config=F32, compile=True)
    optimum_image = optimum("a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(1), output_type="np", **SIZE).images
    assert np.abs(optimum_image - ours_image).max() <= PARITY_ATOL
    genai = openvino_genai.Text2ImagePipeline(str(ov_large_fp32), "CPU", INFERENCE_PRECISION_HINT="f32")
    tensor = genai.generate("a cat", num_inference_steps=2, **SIZE)
    assert tensor.data.shape == (1, 64, 64, 3)


def test_lora_and_ip_adapter_in_either_order_give_one_image(ov_large_fp32, ov_ip_adapter, tiny_large_checkpoint, tmp_path):
    lora = sd3_helper.make_tiny_lora(tiny_large_checkpoint, tmp_path / "lora")
    arguments = dict(prompt="a cat", num_inference_steps=2, output_type="latent", latents=latents_for(1).numpy(), ip_adapter_image=prompt_image(0), taylorseer=None, **SIZE)
    images = []
    for order in (("lora", "ip"), ("ip", "lora")):
        pipe = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(ov_large_fp32, ov_config=F32)
        for step in order:
            pipe.load_lora_weights(lora) if step == "lora" else pipe.load_ip_adapter(ov_ip_adapter)
        images.append(pipe(**arguments).images)
    np.testing.assert_allclose(images[0], images[1], atol=1e-5)
    pipe.unload_lora_weights()  # reads the IR anew: the adapter's attention comes back on the next call
    without_lora = pipe(**arguments).images
    assert np.abs(without_lora - images[1]).max() > 1e-3
    plain = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(ov_large_fp32, ov_config=F32)
    plain.load_ip_adapter(ov_ip_adapter)
    np.testing.assert_allclose(plain(**arguments).images, without_lora, atol=1e-6)


def test_static_shapes_clones_and_skip_layer_guidance(ours):
    ours.set_ip_adapter_scale(0.6)
    arguments = dict(prompt="a cat", num_inference_steps=STEPS, output_type="latent", latents=latents_for(1).numpy(), ip_adapter_image=prompt_image(0), taylorseer=None, **SIZE)
    dynamic = ours(**arguments).images
    twin = ours.clone()
    np.testing.assert_allclose(twin(**arguments).images, dynamic, atol=1e-6)
    del twin
    static = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(ours.model_dir, ov_config=F32)
    static.load_ip_adapter(ours.ip_adapter.path)
    static.set_ip_adapter_scale(0.6)
    static.reshape(**SIZE)
    np.testing.assert_allclose(static(**arguments).images, dynamic, atol=1e-5)
    assert all(dim.is_static for i in static.transformer.model.inputs for dim in i.get_partial_shape())
    guided = ours(**arguments, skip_guidance_layers=[1], skip_layer_guidance_start=0.0, skip_layer_guidance_stop=1.0).images
    assert np.isfinite(guided).all() and np.abs(guided - dynamic).max() > 1e-4


# -- Errors that need a loaded pipeline ----------------------------------------------------------------------------


def test_call_errors_name_the_argument(ov_large_fp32, ours):
    plain = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(ov_large_fp32)
    with pytest.raises(ValueError, match=r"need an IP-Adapter: load one first with `pipe.load_ip_adapter"):
        plain("a cat", ip_adapter_image=prompt_image(0), num_inference_steps=1, **SIZE)
    with pytest.raises(ValueError, match="`set_ip_adapter_scale` needs an IP-Adapter"):
        plain.set_ip_adapter_scale(0.5)
    with pytest.raises(ValueError, match="either `ip_adapter_image` or `ip_adapter_image_embeds`, not both"):
        ours("a cat", ip_adapter_image=prompt_image(0), ip_adapter_image_embeds=np.zeros((2, 16, 40), np.float32), num_inference_steps=1)
    with pytest.raises(ValueError, match=r"holds 3 images for 2 prompt\(s\)"):
        ours(["a", "b"], ip_adapter_image=[prompt_image(0)] * 3, num_inference_steps=1)
    with pytest.raises(TypeError, match="`ip_adapter_image` has to be a PIL image.*holds str"):
        ours("a cat", ip_adapter_image="cat.png", num_inference_steps=1)
    with pytest.raises(ValueError, match=r"`ip_adapter_image_embeds` has to be \(n, tokens, 40\).*shape \(1, 16, 40\)"):
        ours("a cat", ip_adapter_image_embeds=np.zeros((1, 16, 40), np.float32), num_inference_steps=1)
    with pytest.raises(ValueError, match="finite number"):
        ours.set_ip_adapter_scale(float("nan"))


def test_an_adapter_without_image_encoder_takes_embeds_only(ov_large_fp32, tiny_ip_adapter_source, tmp_path):
    pipe = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(ov_large_fp32, ov_config=F32)
    pipe.load_ip_adapter(tiny_ip_adapter_source, image_encoder_folder=None, output_dir=tmp_path / "no-encoder")
    assert not (tmp_path / "no-encoder" / "image_encoder").exists()
    with pytest.raises(ValueError, match=r"loaded without an image encoder \(`image_encoder_folder=None`\).*Pass `ip_adapter_image_embeds`"):
        pipe("a cat", ip_adapter_image=prompt_image(0), num_inference_steps=1, **SIZE)
    embeds = np.random.default_rng(0).standard_normal((1, 16, 40)).astype(np.float32)
    image = pipe("a cat", ip_adapter_image_embeds=embeds, num_inference_steps=1, guidance_scale=1.0, output_type="latent", **SIZE).images
    assert image.shape == (1, 4, 32, 32) and np.isfinite(image).all()


def test_dual_attention_transformers_are_refused(converted, tiny_ip_adapter_source):
    pipe = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(converted("fp32", family="sd3.5-medium"))
    with pytest.raises(ValueError, match=r"has dual-attention blocks \[0, 1, 2, 3, 4, 5\] \(SD3.5 Medium's MMDiT-X\)"):
        pipe.load_ip_adapter(tiny_ip_adapter_source)


def test_an_adapter_for_another_transformer_is_refused(converted, tiny_ip_adapter_source):
    pipe = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(converted("fp32"))  # the 2-block SD3-shaped tiny model
    with pytest.raises(ValueError, match="The IP-Adapter has image attention for 3 blocks, this transformer has 2"):
        pipe.load_ip_adapter(tiny_ip_adapter_source, output_dir=converted("fp32") / "ip_adapters" / "wrong")
    assert not (converted("fp32") / "ip_adapters" / "wrong").exists()


def test_pipelines_made_with_from_pipe_share_an_adapter_loaded_later(ov_large_fp32, ov_ip_adapter):
    """The adapter lives with the transformer graph it is stitched into: a `from_pipe` pipeline made before loading sees
    it, and sees it go."""
    pipe = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(ov_large_fp32, ov_config=F32)
    img2img = sd3_helper.OVStableDiffusion3Img2ImgPipeline.from_pipe(pipe)
    pipe.load_ip_adapter(ov_ip_adapter)
    assert img2img.ip_adapter is pipe.ip_adapter and img2img.is_ip_adapter_active
    image = img2img("a cat", image=test_image(height=64, width=64), strength=0.5, num_inference_steps=2, ip_adapter_image=prompt_image(0), output_type="np").images
    assert image.shape == (1, 64, 64, 3)
    pipe.unload_ip_adapter()
    assert img2img.ip_adapter is None
    assert img2img("a cat", image=test_image(height=64, width=64), strength=0.5, num_inference_steps=2, output_type="np").images.shape == (1, 64, 64, 3)
