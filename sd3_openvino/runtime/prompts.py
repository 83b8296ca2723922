"""Prompt encoding for SD3: three text encoders (CLIP-L, CLIP-G, T5) with their tokenizers, the prompt cache, and
which compiled encoders to drop after encoding.

`PromptEncoder.encode` is diffusers' `StableDiffusion3Pipeline._get_clip_prompt_embeds` / `_get_t5_prompt_embeds` /
`encode_prompt` in numpy, with positive and negative prompts encoded as one batch per encoder. The pipeline in
`runtime/pipeline.py` holds one and passes each call its `run_submodel` (so a caller can watch or replace it).

`PromptEncodingMixin` gives the pipelines diffusers' `encode_prompt`, the step that makes the transformer's text
inputs (`prepare_embeddings`), and the options that keep text encoders off the memory between prompts
(`enable_prompt_cache`, `enable_text_encoder_release`).

Imports numpy, the layout, `runtime/arrays.py`, `runtime/checks.py` and `runtime/submodels.py`.
"""

import logging
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..core.layout import GENERATION_DEFAULTS, TEXT_ENCODERS
from .arrays import as_array
from .checks import as_batch
from .submodels import OVSubmodel, trim_heap

if TYPE_CHECKING:
    from .lora import LoraAdapters

# (submodel, **inputs) -> outputs by name: the pipeline's `run_submodel`
RunSubmodel = Callable[..., dict[str, np.ndarray]]


class PromptCache:
    """The text encoders' outputs for the last `max_prompts` distinct prompts (least recently used goes first), so
    that a seed sweep or a settings sweep over one prompt encodes it once. Keys hold every input of the encoding."""

    def __init__(self, max_prompts: int):
        if isinstance(max_prompts, bool) or not isinstance(max_prompts, int) or max_prompts < 1:
            raise ValueError(f"`max_prompts` has to be a whole number >= 1 but is {max_prompts!r}; use `disable_prompt_cache()` for none.")
        self.max_prompts, self.entries = max_prompts, OrderedDict()

    def get(self, key: tuple):
        """The cached value of `key` (now the most recently used), or None."""
        if key in self.entries:
            self.entries.move_to_end(key)
        return self.entries.get(key)

    def put(self, key: tuple, value) -> None:
        """Keep `value` under `key`, dropping the least recently used entry beyond `max_prompts`."""
        self.entries[key] = value
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_prompts:
            self.entries.popitem(last=False)


def prompt_batch_size(prompt: str | list[str] | None, prompt_embeds) -> int:
    """How many prompts a call has: one for a string, the list's length, or the embeddings' batch."""
    if prompt is None:
        return len(prompt_embeds)
    return 1 if isinstance(prompt, str) else len(prompt)


def encoder_texts(
    prompt: str | list[str],
    prompt_2: str | list[str] | None,
    prompt_3: str | list[str] | None,
    *,
    negatives: tuple | None,
) -> list[list[str]]:
    """The texts of each encoder (CLIP-L, CLIP-G, T5), the positive prompts first and then, when `negatives`
    (`negative_prompt`, `negative_prompt_2`, `negative_prompt_3`) is given for guidance, the negative ones.

    As diffusers: `prompt_2` / `prompt_3` default to `prompt`, the negatives default to `negative_prompt`, then "".
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    batch_size = len(prompts)
    texts = [prompts, as_batch(prompt_2, batch_size, "prompt_2") or prompts, as_batch(prompt_3, batch_size, "prompt_3") or prompts]
    if negatives is None:
        return texts
    negative_prompt, negative_prompt_2, negative_prompt_3 = negatives
    negatives_1 = as_batch(negative_prompt or "", batch_size, "negative_prompt")
    negatives_2 = as_batch(negative_prompt_2, batch_size, "negative_prompt_2") or negatives_1
    negatives_3 = as_batch(negative_prompt_3, batch_size, "negative_prompt_3") or negatives_1
    return [texts[0] + negatives_1, texts[1] + negatives_2, texts[2] + negatives_3]


def split_guidance(embeds: np.ndarray, pooled: np.ndarray, *, num_images_per_prompt: int, guided: bool) -> tuple:
    """(embeds, negative_embeds, pooled, negative_pooled) from encoder outputs ordered [positive, negative], each
    repeated `num_images_per_prompt` times; the negatives are None without guidance."""
    batch_size = len(embeds) // (2 if guided else 1)
    embeds = np.repeat(embeds, num_images_per_prompt, axis=0)
    pooled = np.repeat(pooled, num_images_per_prompt, axis=0)
    if not guided:
        return embeds, None, pooled, None
    split = batch_size * num_images_per_prompt
    return embeds[:split], embeds[split:], pooled[:split], pooled[split:]


def token_ids(tokenizer, prompts: list[str], *, max_length: int, encoder: str, limit: str, logger: logging.Logger) -> np.ndarray:
    """Token ids (B, max_length), padded and truncated; what truncation drops is logged as diffusers does."""
    input_ids = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="np").input_ids
    untruncated_ids = tokenizer(prompts, padding="longest", return_tensors="np").input_ids
    if untruncated_ids.shape[-1] > input_ids.shape[-1]:
        removed_text = tokenizer.batch_decode(untruncated_ids[:, max_length - 1 : -1])
        logger.warning(f"The following part of your input was truncated because {encoder} {limit} {max_length} tokens: {removed_text}")
    return input_ids.astype(np.int64)


class PromptEncoder:
    """SD3's text encoders and tokenizers: prompts in, the transformer's text inputs out.

    `cache` (a `PromptCache` or None) keeps recent encodings; `release` names the text encoders whose compiled models
    are dropped after each encoding (they compile again on next use). Truncation warnings go to `logger`.
    """

    def __init__(self, *, tokenizers: dict, text_encoders: dict[str, OVSubmodel | None], joint_attention_dim: int, logger: logging.Logger):
        self.tokenizers = tokenizers  # "tokenizer", "tokenizer_2" and "tokenizer_3" (None without T5)
        self.text_encoders = text_encoders  # "text_encoder", "text_encoder_2" and "text_encoder_3" (None without T5)
        self.joint_attention_dim = joint_attention_dim  # the transformer's text width (T5's)
        self.clip_length = tokenizers["tokenizer"].model_max_length  # 77 CLIP tokens
        self.logger = logger
        self.cache: PromptCache | None = None
        self.release: tuple[str, ...] = ()

    def encode(self, texts: list[list[str]], *, clip_skip: int | None, max_sequence_length: int, adapters: tuple, run: RunSubmodel):
        """(embeds (B, 77 + max_sequence_length, joint_attention_dim), pooled (B, pooled_projection_dim)) of the
        texts of `encoder_texts`, from the cache when it holds them. `adapters` identifies the LoRA adapters on
        the text encoders (part of the cache key); `run(submodel, **inputs)` runs an encoder."""
        key = (tuple(map(tuple, texts)), clip_skip, max_sequence_length, adapters)
        cached = self.cache.get(key) if self.cache is not None else None
        if cached is not None:
            return cached
        embeds, pooled = self.encode_texts(*texts, clip_skip=clip_skip, max_sequence_length=max_sequence_length, run=run)
        if self.cache is not None:
            self.cache.put(key, (embeds, pooled))
        if self.release:
            self.release_models(self.release)
        return embeds, pooled

    def encode_texts(self, prompts: list[str], prompts_2: list[str], prompts_3: list[str], *, clip_skip, max_sequence_length, run: RunSubmodel):
        """Run the encoders (no cache): CLIP-L and CLIP-G side by side, zero-padded to T5's width, then T5 after them."""
        clip_l, pooled_l = self.clip_embeds(prompts, index=0, clip_skip=clip_skip, run=run)
        clip_g, pooled_g = self.clip_embeds(prompts_2, index=1, clip_skip=clip_skip, run=run)
        t5 = self.t5_embeds(prompts_3, max_sequence_length=max_sequence_length, run=run)
        clip = np.concatenate([clip_l, clip_g], axis=-1)
        clip = np.pad(clip, ((0, 0), (0, 0), (0, t5.shape[-1] - clip.shape[-1])))  # zero-pad to the T5 width
        prompt_embeds = np.concatenate([clip, t5], axis=-2)  # (B, 77 + max_sequence_length, joint_attention_dim)
        pooled = np.concatenate([pooled_l, pooled_g], axis=-1)  # (B, pooled_projection_dim)
        return prompt_embeds, pooled

    def clip_embeds(self, prompts: list[str], *, index: int, clip_skip: int | None, run: RunSubmodel) -> tuple[np.ndarray, np.ndarray]:
        """(penultimate hidden states (B, 77, width), pooled projection (B, projection_dim)) of one CLIP encoder."""
        suffix = "" if index == 0 else f"_{index + 1}"
        tokenizer, encoder = self.tokenizers[f"tokenizer{suffix}"], self.text_encoders[f"text_encoder{suffix}"]
        limit = "can only handle sequences up to"
        input_ids = token_ids(tokenizer, prompts, max_length=self.clip_length, encoder="CLIP", limit=limit, logger=self.logger)
        outputs = run(encoder, input_ids=input_ids)
        layer = encoder.config["num_hidden_layers"] - 1 - (clip_skip or 0)  # diffusers: hidden_states[-(clip_skip + 2)]
        return outputs[f"hidden_states.{layer}"], outputs["text_embeds"]

    def t5_embeds(self, prompts: list[str], *, max_sequence_length: int, run: RunSubmodel) -> np.ndarray:
        """T5 hidden states (B, max_sequence_length, joint_attention_dim), zeros when the model has no T5."""
        encoder = self.text_encoders.get("text_encoder_3")
        if encoder is None:
            return np.zeros((len(prompts), max_sequence_length, self.joint_attention_dim), dtype=np.float32)
        limit = "reads `max_sequence_length` ="
        input_ids = token_ids(self.tokenizers["tokenizer_3"], prompts, max_length=max_sequence_length, encoder="T5", limit=limit, logger=self.logger)
        return run(encoder, input_ids=input_ids)["last_hidden_state"]

    def release_models(self, names: tuple[str, ...]) -> None:
        """Drop the compiled models of the text encoders `names`, and the heap memory they held."""
        for name in names:
            submodel = self.text_encoders.get(name)
            if submodel is not None:
                submodel.release()
        trim_heap()


# ----------------------------------------------------------------------------------------------------------
# The pipelines' prompt API
# ----------------------------------------------------------------------------------------------------------


class PromptEncodingMixin:
    """Prompt encoding for a pipeline: works on its `prompt_encoder` (a `PromptEncoder`), runs the encoders with its
    `run_submodel` under its call lock, and keys the cache on its LoRA adapters (`lora`)."""

    prompt_encoder: PromptEncoder
    lora: "LoraAdapters"
    _call_lock: threading.RLock
    run_submodel: RunSubmodel

    # -- Text encoders on demand ---------------------------------------------------------------------------

    @property
    def prompt_cache(self) -> PromptCache | None:
        """The `PromptCache` of `enable_prompt_cache()`, or None."""
        return self.prompt_encoder.cache

    @prompt_cache.setter
    def prompt_cache(self, cache: PromptCache | None) -> None:
        self.prompt_encoder.cache = cache

    @property
    def release_text_encoders(self) -> tuple[str, ...]:
        """The text encoders `enable_text_encoder_release()` drops after encoding."""
        return self.prompt_encoder.release

    @release_text_encoders.setter
    def release_text_encoders(self, names: tuple[str, ...]) -> None:
        self.prompt_encoder.release = tuple(names)

    def enable_prompt_cache(self, max_prompts: int = 16) -> None:
        """Keep the embeddings of the last `max_prompts` distinct prompts (with their negatives, `clip_skip` and
        `max_sequence_length`, and the text encoders' LoRA adapters), so that a repeated prompt is not encoded again."""
        self.prompt_cache = PromptCache(max_prompts)

    def disable_prompt_cache(self) -> None:
        """Encode every prompt again (and forget the cached embeddings)."""
        self.prompt_cache = None

    def enable_text_encoder_release(self, text_encoders: tuple[str, ...] = TEXT_ENCODERS) -> None:
        """After encoding, drop the compiled models of `text_encoders` (all three by default; `("text_encoder_3",)`
        for T5 alone, the largest), so that the denoising steps and the decode run without them; they compile again
        on the next prompt that needs them (from OpenVINO's cache when `from_pretrained(cache_dir=...)` gave one).
        Pairs well with `enable_prompt_cache`, which spares that for a repeated prompt."""
        unknown = [name for name in text_encoders if name not in TEXT_ENCODERS] if isinstance(text_encoders, (tuple, list)) else [text_encoders]
        if unknown:
            raise ValueError(f"`text_encoders` names {unknown}; the text encoders are {list(TEXT_ENCODERS)}.")
        self.release_text_encoders = tuple(text_encoders)

    def disable_text_encoder_release(self) -> None:
        """Keep the text encoders compiled between calls (the default)."""
        self.release_text_encoders = ()

    def release_text_encoder_models(self, text_encoders: tuple[str, ...] = TEXT_ENCODERS) -> None:
        """Drop the compiled models of `text_encoders` now, and the heap memory they held; each compiles again on
        its next use."""
        self.prompt_encoder.release_models(tuple(text_encoders))

    # -- Encoding ------------------------------------------------------------------------------------------

    def encode_prompt(
        self,
        prompt: str | list[str],
        prompt_2: str | list[str] | None = None,
        prompt_3: str | list[str] | None = None,
        *,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        negative_prompt_3: str | list[str] | None = None,
        do_classifier_free_guidance: bool = True,
        num_images_per_prompt: int = 1,
        clip_skip: int | None = None,
        max_sequence_length: int = GENERATION_DEFAULTS.max_sequence_length,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
        """(prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds), float32 numpy.

        As diffusers: `prompt_2` / `prompt_3` default to `prompt`, negatives default to "", and each embedding is
        repeated `num_images_per_prompt` times. Positive and negative prompts go through each encoder as one batch.
        """
        negatives = (negative_prompt, negative_prompt_2, negative_prompt_3) if do_classifier_free_guidance else None
        texts = encoder_texts(prompt, prompt_2, prompt_3, negatives=negatives)
        with self._call_lock:
            adapters = tuple(self.lora.signature(name) for name in TEXT_ENCODERS)  # a LoRA on a text encoder changes its output
            embeds, pooled = self.prompt_encoder.encode(
                texts, clip_skip=clip_skip, max_sequence_length=max_sequence_length, adapters=adapters, run=self.run_submodel
            )
        return split_guidance(embeds, pooled, num_images_per_prompt=num_images_per_prompt, guided=do_classifier_free_guidance)

    def prepare_embeddings(
        self,
        *,
        prompts: dict,
        prompt_embeds,
        negative_prompt_embeds,
        pooled_prompt_embeds,
        negative_pooled_prompt_embeds,
        do_classifier_free_guidance: bool,
        num_images_per_prompt: int,
        clip_skip: int | None,
        max_sequence_length: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The transformer's text inputs (embeddings, pooled) as float32 numpy: encoded from `prompts` (the keyword
        arguments of `encode_prompt`) unless given (numpy or torch), with the negative batch first when guidance is on."""
        prompt_embeds, negative_prompt_embeds = as_array(prompt_embeds), as_array(negative_prompt_embeds)
        pooled_prompt_embeds, negative_pooled_prompt_embeds = as_array(pooled_prompt_embeds), as_array(negative_pooled_prompt_embeds)
        if prompt_embeds is None:
            embeds, negative_embeds, pooled, negative_pooled = self.encode_prompt(
                **prompts,
                do_classifier_free_guidance=do_classifier_free_guidance and negative_prompt_embeds is None,
                num_images_per_prompt=num_images_per_prompt,
                clip_skip=clip_skip,
                max_sequence_length=max_sequence_length,
            )
            prompt_embeds, pooled_prompt_embeds = embeds, pooled
            if negative_prompt_embeds is None:
                negative_prompt_embeds, negative_pooled_prompt_embeds = negative_embeds, negative_pooled
        elif do_classifier_free_guidance and negative_prompt_embeds is None:
            raise ValueError("With `prompt_embeds` and `guidance_scale > 1`, pass `negative_prompt_embeds` too.")
        if not do_classifier_free_guidance:
            return prompt_embeds, pooled_prompt_embeds
        return (
            np.concatenate([negative_prompt_embeds, prompt_embeds], axis=0),
            np.concatenate([negative_pooled_prompt_embeds, pooled_prompt_embeds], axis=0),
        )
