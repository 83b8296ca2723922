"""Repeated text tokens folded into one, exactly: the same images from fewer tokens.

Without T5, SD3's text is CLIP's 77 tokens and `max_sequence_length` rows of zeros where T5's would be (diffusers
pads to 256 by default: 333 tokens). Those zero rows are identical, and stay identical through every joint block: the
per-token layers (norms, the AdaLN modulation, projections, MLP) map equal rows to equal rows, attention gives equal
queries equal outputs, and SD3 adds positions to the image tokens only. In each joint attention, n tokens with one key
and one value weigh in the softmax exactly as one token whose logit has log n added:

    sum_j exp(q.k_j) v_j  with k_j = k, v_j = v for n of the j   ==   ... + exp(q.k + log n) v

So the transformer runs one token for them, with `text_attention_bias` (log n for that token, 0 for the others) added
to the logits of its joint attentions: 1024 image tokens attend over 78 text tokens instead of 333 at 512x512
(openvino.genai pads to 154 and so gives another image), and the image is diffusers' within float rounding.

How the bias reaches the attention. The converted IR is left as it is (optimum-intel and openvino.genai load the same
file); `add_text_attention_bias` changes the loaded graph: each joint attention (a `ScaledDotProductAttention` whose
keys are a `Concat` of the image keys and the text keys, the text side computed from `encoder_hidden_states`) gets an
additive mask, zeros for the image tokens and the new `text_attention_bias` input for the text tokens. Attentions over
image tokens only (SD3.5 Medium's second attention) and an IP-Adapter's image attention are not joint and stay as they
are. ControlNets that read the text (InstantX's) get the same change.

`fold_repeated_text` folds a batch's embeddings when every row from CLIP's last token on is the same in each prompt
(no T5, or embeddings made that way); with T5 nothing folds and the bias is zeros. `TextFoldingMixin` does it for the
pipelines. Imports numpy and `submodels.py`; `openvino` when a graph is changed.
"""

import math
from dataclasses import dataclass

import numpy as np

from .submodels import OVSubmodel

TEXT_ATTENTION_BIAS = "text_attention_bias"  # the transformer input: (text tokens,) log of how many tokens each stands for
STITCH_PREFIX = "text_folding/"  # friendly-name prefix of the ops `add_text_attention_bias` adds


# ----------------------------------------------------------------------------------------------------------
# The graph
# ----------------------------------------------------------------------------------------------------------


def _downstream(parameter) -> set:
    """The (unique) names of the nodes `parameter`'s value flows into, itself included."""
    seen, stack = set(), [parameter]
    while stack:
        node = stack.pop()
        if node.get_name() in seen:
            continue
        seen.add(node.get_name())
        for output in node.outputs():
            stack.extend(target.get_node() for target in output.get_target_inputs())
    return seen


def joint_attentions(ov_model) -> list:
    """The graph's joint attentions: `ScaledDotProductAttention` ops without a mask whose keys are the `Concat` (on the
    token axis) of image keys and of text keys computed from `encoder_hidden_states`."""
    text = [parameter for parameter in ov_model.get_parameters() if "encoder_hidden_states" in parameter.output(0).get_names()]
    if not text:
        return []
    from_text = _downstream(text[0])
    found = []
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() != "ScaledDotProductAttention" or op.get_input_size() != 3:
            continue
        keys = op.input_value(1).get_node()
        if keys.get_type_name() != "Concat" or keys.get_input_size() != 2 or keys.get_attributes()["axis"] not in (2, -2):
            continue
        if keys.input_value(1).get_node().get_name() in from_text:
            found.append(op)
    return found


def has_text_attention_bias(ov_model) -> bool:
    """True when `ov_model` takes `text_attention_bias` (`add_text_attention_bias` changed it)."""
    return any(TEXT_ATTENTION_BIAS in parameter.output(0).get_names() for parameter in ov_model.get_parameters())


def add_text_attention_bias(ov_model) -> bool:
    """Give every joint attention of `ov_model` the additive mask [0 for each image token, `text_attention_bias`], in
    place (see the module docstring); False, and the graph unchanged, when it has no joint attention to change (a
    graph exported by another tool)."""
    import openvino as ov
    from openvino import opset13 as ops

    attentions = joint_attentions(ov_model)
    if not attentions or has_text_attention_bias(ov_model):
        return bool(attentions)
    bias = ops.parameter([-1], ov.Type.f32, name=TEXT_ATTENTION_BIAS)
    bias.output(0).get_tensor().set_names({TEXT_ATTENTION_BIAS})
    image_keys = attentions[0].input_value(1).get_node().input_value(0)  # (B, heads, image tokens, head dim)
    image_tokens = ops.gather(ops.shape_of(image_keys), ops.constant([2]), ops.constant(0))
    zeros = ops.broadcast(ops.constant(np.float32(0.0)), image_tokens)
    mask = ops.reshape(ops.concat([zeros, bias], axis=0), ops.constant([1, 1, 1, -1]), special_zero=False)  # (1, 1, 1, keys)
    for index, attention in enumerate(attentions):
        query, keys, values = (attention.input_value(i) for i in range(3))
        typed_mask = mask if query.get_element_type() == ov.Type.f32 else ops.convert(mask, query.get_element_type())
        masked = ops.scaled_dot_product_attention(query, keys, values, typed_mask, causal=False)
        masked.set_friendly_name(f"{STITCH_PREFIX}attention.{index}")
        for target in list(attention.output(0).get_target_inputs()):
            target.replace_source_output(masked.output(0))
    ov_model.add_parameters([bias])
    ov_model.validate_nodes_and_infer_types()
    return True


# ----------------------------------------------------------------------------------------------------------
# The text
# ----------------------------------------------------------------------------------------------------------


def fold_repeated_text(prompt_embeds: np.ndarray, *, clip_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """(embeds, bias): (B, clip_tokens + n, dim) embeddings whose rows from `clip_tokens` on are one row repeated in
    every prompt become (B, clip_tokens + 1, dim), bias (clip_tokens + 1,) 0 except log n for the folded row; other
    embeddings come back as they are, with a bias of zeros."""
    tail = prompt_embeds[:, clip_tokens:]
    if tail.shape[1] > 1 and np.array_equal(tail, np.broadcast_to(tail[:, :1], tail.shape)):
        bias = np.zeros(clip_tokens + 1, dtype=np.float32)
        bias[-1] = math.log(tail.shape[1])
        return np.ascontiguousarray(prompt_embeds[:, : clip_tokens + 1]), bias
    return prompt_embeds, np.zeros(prompt_embeds.shape[1], dtype=np.float32)


@dataclass(frozen=True)
class TransformerText:
    """The text a call's transformer (and a ControlNet that reads text) gets: `embeds` (B, tokens, dim), folded when
    the call folds, their `bias` (tokens,) (zeros when not folded), and the `pooled` embeddings (B, dim)."""

    embeds: np.ndarray
    pooled: np.ndarray
    bias: np.ndarray

    @classmethod
    def of(cls, prompt_embeds: np.ndarray, pooled_prompt_embeds: np.ndarray, *, clip_tokens: int, fold: bool) -> "TransformerText":
        """The text for `prompt_embeds` and `pooled_prompt_embeds`, folded with `fold` (see `fold_repeated_text`)."""
        if fold:
            embeds, bias = fold_repeated_text(prompt_embeds, clip_tokens=clip_tokens)
        else:
            embeds, bias = prompt_embeds, np.zeros(prompt_embeds.shape[1], dtype=np.float32)
        return cls(embeds=embeds, pooled=pooled_prompt_embeds, bias=bias)

    @property
    def tokens(self) -> int:
        return self.embeds.shape[1]

    def positive(self) -> "TransformerText":
        """The positive half of a guidance batch ([negative, positive])."""
        return TransformerText(embeds=self.embeds[len(self.embeds) // 2 :], pooled=self.pooled[len(self.pooled) // 2 :], bias=self.bias)

    def attention_inputs(self, submodel) -> dict[str, np.ndarray]:
        """`encoder_hidden_states`, and `text_attention_bias` where `submodel` (an `OVSubmodel`) takes it."""
        biased = has_text_attention_bias(submodel.model)
        return {"encoder_hidden_states": self.embeds, **({TEXT_ATTENTION_BIAS: self.bias} if biased else {})}

    def inputs(self, submodel) -> dict[str, np.ndarray]:
        """The transformer's text inputs: `attention_inputs` and `pooled_projections`."""
        return {**self.attention_inputs(submodel), "pooled_projections": self.pooled}


class TextFoldingMixin:
    """Folding repeated text tokens for a pipeline (see the module docstring). `fold_text_padding` (True by default,
    `from_pretrained(fold_text_padding=False)` turns it off) says whether the models that read the prompt embeddings in
    attention get `text_attention_bias`; a call folds when all of them have it."""

    transformer: OVSubmodel
    text_encoder_3: OVSubmodel | None
    tokenizer_max_length: int
    fold_text_padding: bool

    def text_attention_models(self) -> list[OVSubmodel]:
        """The models that read the prompt embeddings in attention: the transformer (ControlNet pipelines add theirs)."""
        return [self.transformer]

    def enable_text_folding(self) -> None:
        """Give each model of `text_attention_models` its `text_attention_bias` unless it has it (again after
        `unload_lora_weights` read the IR anew); a model changed compiles again on next use."""
        if not self.fold_text_padding:
            return
        for submodel in self.text_attention_models():
            if has_text_attention_bias(submodel.model) or not joint_attentions(submodel.model):
                continue
            submodel.check_unshared("Folding repeated text tokens")
            add_text_attention_bias(submodel.model)
            if submodel.shapes is not None and "encoder_hidden_states" in submodel.shapes:  # static shapes: the bias too
                submodel.shapes[TEXT_ATTENTION_BIAS] = [submodel.shapes["encoder_hidden_states"][1]]
                names = {name for port in submodel.model.inputs for name in port.get_names()}  # not an IP-Adapter's yet
                submodel.model.reshape({name: dims for name, dims in submodel.shapes.items() if name in names})
            submodel.release()

    @property
    def folds_text(self) -> bool:
        """True when this pipeline's calls fold repeated text tokens: every model that reads the text takes the bias."""
        return self.fold_text_padding and all(has_text_attention_bias(submodel.model) for submodel in self.text_attention_models())

    def transformer_text(self, prompt_embeds: np.ndarray, pooled_prompt_embeds: np.ndarray) -> TransformerText:
        """A call's `TransformerText`: folded when `folds_text`."""
        return TransformerText.of(prompt_embeds, pooled_prompt_embeds, clip_tokens=self.tokenizer_max_length, fold=self.folds_text)

    def fit_text_tokens(self, shape: dict, *, text: TransformerText, transformer_batch_varies: bool) -> None:
        """Fit the models again (`fit_call_shape`) when a call's embeddings give the transformer another number of text
        tokens than `expected_text_tokens` said (given embeddings that fold, or do not)."""
        if text.tokens != shape["text_tokens"]:
            self.fit_call_shape({**shape, "text_tokens": text.tokens}, transformer_batch_varies=transformer_batch_varies)

    def expected_text_tokens(self, max_sequence_length: int) -> int:
        """The text tokens the transformer gets for prompts encoded with `max_sequence_length` (static shapes)."""
        folds = self.folds_text and self.text_encoder_3 is None
        return self.tokenizer_max_length + (1 if folds else max_sequence_length)
