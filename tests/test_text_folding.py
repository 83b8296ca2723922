"""Repeated text tokens folded into one (`runtime/text_folding.py`): the math on a small attention graph (fast), then
the tiny SD3 models, whose images must not change (slow): without T5 the transformer runs 78 text tokens, not 333."""

import hashlib
import math

import numpy as np
import openvino as ov
import pytest
import torch
from openvino import opset13 as ops

import sd3_helper
from conftest import F32
from test_controlnet import control_picture
from sd3_openvino.runtime.text_folding import (
    TEXT_ATTENTION_BIAS,
    TransformerText,
    add_text_attention_bias,
    fold_repeated_text,
    has_text_attention_bias,
    joint_attentions,
)

CLIP_TOKENS, IMAGE_TOKENS, DIM = 5, 6, 8
COMMON = dict(prompt="a photo of a cat", negative_prompt="blurry", height=32, width=32, num_inference_steps=3, output_type="np")


# -- The text ------------------------------------------------------------------------------------------------------


def text_with_padding(*, batch: int = 2, padding: int = 7, seed: int = 0) -> np.ndarray:
    """(batch, CLIP_TOKENS + padding, DIM): random CLIP rows, then `padding` zero rows (no T5)."""
    clip = np.random.default_rng(seed).standard_normal((batch, CLIP_TOKENS, DIM)).astype(np.float32)
    return np.concatenate([clip, np.zeros((batch, padding, DIM), dtype=np.float32)], axis=1)


def test_repeated_rows_after_clip_fold_into_one_weighted_by_their_count():
    embeds, bias = fold_repeated_text(text_with_padding(padding=7), clip_tokens=CLIP_TOKENS)
    assert embeds.shape == (2, CLIP_TOKENS + 1, DIM) and embeds.flags.c_contiguous
    assert bias.dtype == np.float32 and bias.shape == (CLIP_TOKENS + 1,)
    np.testing.assert_array_equal(bias[:-1], 0.0)
    assert bias[-1] == pytest.approx(math.log(7))


def test_text_whose_tail_rows_differ_is_left_as_it_is():
    text = text_with_padding(padding=7)
    text[0, CLIP_TOKENS + 3, 0] = 1e-7  # one row differs in one prompt (as T5's rows do)
    folded, bias = fold_repeated_text(text, clip_tokens=CLIP_TOKENS)
    assert folded is text
    np.testing.assert_array_equal(bias, np.zeros(CLIP_TOKENS + 7, dtype=np.float32))


def test_a_single_row_after_clip_is_left_as_it_is():
    text = text_with_padding(padding=1)
    folded, bias = fold_repeated_text(text, clip_tokens=CLIP_TOKENS)
    assert folded is text and bias.shape == (CLIP_TOKENS + 1,) and not bias.any()


def test_prompts_with_different_padding_rows_do_not_fold():
    text = text_with_padding(padding=4)
    text[1, CLIP_TOKENS:] = 0.5  # each prompt's rows repeat, but the prompts differ: still foldable, one bias for both
    folded, bias = fold_repeated_text(text, clip_tokens=CLIP_TOKENS)
    assert folded.shape[1] == CLIP_TOKENS + 1 and bias[-1] == pytest.approx(math.log(4))
    text[1, -1] = 0.25  # now one prompt's rows differ among themselves
    folded, bias = fold_repeated_text(text, clip_tokens=CLIP_TOKENS)
    assert folded is text and not bias.any()


def test_transformer_text_halves_for_the_positive_prompts_and_names_its_inputs():
    text = TransformerText.of(text_with_padding(batch=4), np.ones((4, 3), dtype=np.float32), clip_tokens=CLIP_TOKENS, fold=True)
    assert text.tokens == CLIP_TOKENS + 1
    positive = text.positive()
    assert positive.embeds.shape == (2, CLIP_TOKENS + 1, DIM) and positive.pooled.shape == (2, 3) and positive.bias is text.bias
    unfolded = TransformerText.of(text_with_padding(batch=4), np.ones((4, 3), dtype=np.float32), clip_tokens=CLIP_TOKENS, fold=False)
    assert unfolded.tokens == CLIP_TOKENS + 7 and not unfolded.bias.any()


# -- The graph: one joint attention, as SD3's blocks build it -----------------------------------------------------------


def attention_graph(*, ip_like: bool = False) -> ov.Model:
    """image (1, I, D) and encoder_hidden_states (1, T, D) -> the joint attention's output (1, 1, I + T, D), with an
    image-only attention and (`ip_like`) an attention whose keys concatenate another input's, which are not joint."""
    rng = np.random.default_rng(1)
    image = ops.parameter([1, -1, DIM], ov.Type.f32, name="hidden_states")
    text = ops.parameter([1, -1, DIM], ov.Type.f32, name="encoder_hidden_states")
    extra = ops.parameter([1, -1, DIM], ov.Type.f32, name="ip_hidden_states")
    for parameter, name in ((image, "hidden_states"), (text, "encoder_hidden_states"), (extra, "ip_hidden_states")):
        parameter.output(0).get_tensor().set_names({name})

    def project(node):  # a linear layer, then (1, 1, tokens, D): one head
        weight = ops.constant(rng.standard_normal((DIM, DIM)).astype(np.float32) / DIM**0.5)
        return ops.unsqueeze(ops.matmul(node, weight, False, False), ops.constant([1]))

    joint = [ops.concat([project(image), project(text)], axis=2) for _ in range(3)]
    outputs = [ops.scaled_dot_product_attention(*joint, causal=False)]
    outputs.append(ops.scaled_dot_product_attention(project(image), project(image), project(image), causal=False))
    if ip_like:
        keys = [ops.concat([project(image), project(extra)], axis=2) for _ in range(2)]
        outputs.append(ops.scaled_dot_product_attention(project(image), *keys, causal=False))
    parameters = [image, text] + ([extra] if ip_like else [])
    return ov.Model([ops.result(output) for output in outputs], parameters)


def run_graph(model: ov.Model, inputs: dict) -> list[np.ndarray]:
    compiled = ov.Core().compile_model(model, "CPU", F32)
    return [value for value in compiled(inputs).values()]


def test_only_joint_attentions_get_the_bias():
    model = attention_graph(ip_like=True)
    assert len(joint_attentions(model)) == 1
    assert add_text_attention_bias(model) and has_text_attention_bias(model)
    assert len(joint_attentions(model)) == 0  # the masked attention has 4 inputs: not changed twice
    kinds = [op.get_input_size() for op in model.get_ordered_ops() if op.get_type_name() == "ScaledDotProductAttention"]
    assert sorted(kinds) == [3, 3, 4]


def test_a_graph_without_joint_attention_is_left_as_it_is():
    image = ops.parameter([1, -1, DIM], ov.Type.f32, name="hidden_states")
    text = ops.parameter([1, -1, DIM], ov.Type.f32, name="encoder_hidden_states")
    text.output(0).get_tensor().set_names({"encoder_hidden_states"})
    queries = ops.unsqueeze(image, ops.constant([1]))
    model = ov.Model([ops.scaled_dot_product_attention(queries, queries, queries, causal=False), ops.reduce_sum(text, ops.constant([1]), False)], [image, text])
    assert not add_text_attention_bias(model)
    assert not has_text_attention_bias(model) and len(model.get_parameters()) == 2


def test_one_token_weighted_by_log_n_attends_exactly_as_n_repeated_tokens():
    rng = np.random.default_rng(2)
    image = rng.standard_normal((1, IMAGE_TOKENS, DIM)).astype(np.float32)
    text = text_with_padding(batch=1, padding=9)
    reference = run_graph(attention_graph(), {"hidden_states": image, "encoder_hidden_states": text})
    model = attention_graph()
    add_text_attention_bias(model)
    folded_text, bias = fold_repeated_text(text, clip_tokens=CLIP_TOKENS)
    folded = run_graph(model, {"hidden_states": image, "encoder_hidden_states": folded_text, TEXT_ATTENTION_BIAS: bias})
    kept = IMAGE_TOKENS + CLIP_TOKENS + 1  # the image tokens, CLIP's, and the one that stands for the padding
    np.testing.assert_allclose(folded[0][:, :, :kept], reference[0][:, :, :kept], atol=1e-6)
    for row in range(kept, reference[0].shape[2]):  # every padding token's output is the folded token's
        np.testing.assert_allclose(reference[0][:, :, row], folded[0][:, :, kept - 1], atol=1e-6)
    np.testing.assert_array_equal(folded[1], reference[1])  # the image-only attention is untouched
    zeros = run_graph(model, {"hidden_states": image, "encoder_hidden_states": text, TEXT_ATTENTION_BIAS: np.zeros(text.shape[1], np.float32)})
    np.testing.assert_allclose(zeros[0], reference[0], atol=1e-6)  # unfolded text with a zero bias: the plain graph


def test_fold_text_padding_must_be_a_bool(tmp_path):
    with pytest.raises(TypeError, match=r"`fold_text_padding` has to be True or False but is 'yes'"):
        sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(tmp_path, fold_text_padding="yes")


# -- The tiny SD3 models -----------------------------------------------------------------------------------------


def transformer_text_shapes(pipe) -> list:
    """Record the shape of `encoder_hidden_states` (and the bias) at each transformer call of `pipe`."""
    seen, run = [], pipe.run_submodel

    def spy(submodel, *, states=None, **inputs):
        if submodel is pipe.transformer:
            seen.append((inputs["encoder_hidden_states"].shape, inputs.get(TEXT_ATTENTION_BIAS)))
        return run(submodel, states=states, **inputs)

    pipe.run_submodel = spy
    return seen


def generate(pipe, **kwargs) -> np.ndarray:
    """Our image, every step computed (as diffusers), from seed 3; `diffusers=True`: `pipe` is diffusers'."""
    ours = {} if kwargs.pop("diffusers", False) else {"taylorseer": None}
    return pipe(**{**COMMON, **ours, **kwargs, "generator": torch.Generator().manual_seed(3)}).images


@pytest.fixture(scope="module")
def folding_pipelines(converted):
    """(folded, unfolded) pipelines of the tiny model without T5, f32."""
    folder = converted("fp32", False)
    pipes = tuple(sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(folder, ov_config=F32, fold_text_padding=fold) for fold in (True, False))
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
    return pipes


CASES = {
    "guided": {},
    "two-prompts-two-images-each": dict(prompt=["a cat", "a red dog"], negative_prompt=["blurry", "dark"], num_images_per_prompt=2),
    "no-guidance": dict(guidance_scale=1.0),
    "max-sequence-length-77": dict(max_sequence_length=77),
}


@pytest.mark.parametrize("kwargs", CASES.values(), ids=CASES.keys())
def test_without_t5_the_transformer_runs_78_text_tokens_and_the_image_does_not_change(folding_pipelines, diffusers_pipeline, kwargs):
    folded, unfolded = folding_pipelines
    transformer_xml = folded.model_dir / "transformer" / "openvino_model.xml"
    before = hashlib.sha256(transformer_xml.read_bytes()).hexdigest()
    seen = transformer_text_shapes(folded)
    image = generate(folded, **kwargs)
    clip_tokens = folded.tokenizer_max_length
    assert {shape[1] for shape, _ in seen} == {clip_tokens + 1}
    assert seen[0][1][-1] == pytest.approx(math.log(kwargs.get("max_sequence_length", 256)))
    assert folded.transformer.shapes["encoder_hidden_states"][1] == clip_tokens + 1  # "auto" shapes compile for 78
    np.testing.assert_allclose(image, generate(unfolded, **kwargs), atol=1e-5)
    np.testing.assert_allclose(image, generate(diffusers_pipeline(load_t5=False), diffusers=True, **kwargs), atol=1e-3)
    assert hashlib.sha256(transformer_xml.read_bytes()).hexdigest() == before  # the IR on disk is left as converted


def test_with_t5_nothing_folds_and_the_bias_is_zero(converted):
    pipe = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(converted("fp32", True), ov_config=F32)
    pipe.set_progress_bar_config(disable=True)
    seen = transformer_text_shapes(pipe)
    image = generate(pipe, max_sequence_length=32)
    assert {shape[1] for shape, _ in seen} == {pipe.tokenizer_max_length + 32} and not any(bias.any() for _, bias in seen)
    plain = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(converted("fp32", True), ov_config=F32, fold_text_padding=False)
    plain.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(image, generate(plain, max_sequence_length=32), atol=1e-5)


def test_static_and_dynamic_shapes_and_a_reread_ir_keep_folding(converted, folding_pipelines, tiny_checkpoint, tmp_path):
    _, unfolded = folding_pipelines
    expected = generate(unfolded)
    folder = converted("fp32", False)
    static = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(folder, ov_config=F32).reshape(height=32, width=32)
    static.set_progress_bar_config(disable=True)
    assert static.transformer.shapes["encoder_hidden_states"][1] == static.tokenizer_max_length + 1
    assert static.transformer.shapes[TEXT_ATTENTION_BIAS] == [static.tokenizer_max_length + 1]
    np.testing.assert_allclose(generate(static), expected, atol=1e-5)
    dynamic = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(folder, ov_config=F32, shapes="dynamic")
    dynamic.set_progress_bar_config(disable=True)
    seen = transformer_text_shapes(dynamic)
    np.testing.assert_allclose(generate(dynamic), expected, atol=1e-5)
    assert seen[0][0][1] == dynamic.tokenizer_max_length + 1
    dynamic.transformer.reload()  # what `unload_lora_weights` does: the IR read anew, without the bias
    assert not has_text_attention_bias(dynamic.transformer.model)
    np.testing.assert_allclose(generate(dynamic), expected, atol=1e-5)
    assert has_text_attention_bias(dynamic.transformer.model) and seen[-1][0][1] == dynamic.tokenizer_max_length + 1


def test_instantx_controlnets_read_the_folded_text_and_the_image_does_not_change(controlnet_models):
    _, model_dir, _, controlnet = controlnet_models["instantx"]
    pipes = [
        sd3_helper.OVStableDiffusion3ControlNetPipeline.from_pretrained(model_dir, controlnet=controlnet, ov_config=F32, fold_text_padding=fold)
        for fold in (True, False)
    ]
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
    folded, unfolded = pipes
    assert folded.folds_text and has_text_attention_bias(folded.controlnets[0].submodel.model)
    assert not has_text_attention_bias(unfolded.controlnets[0].submodel.model)
    control = dict(control_image=control_picture(0, size=(32, 32)), controlnet_conditioning_scale=0.8)
    np.testing.assert_allclose(generate(folded, **control), generate(unfolded, **control), atol=1e-5)
    plain_view = sd3_helper.OVStableDiffusion3Pipeline.from_pipe(folded)  # from_pipe shares the folding
    assert plain_view.folds_text

