"""The three SD3 tokenizers without transformers: Hugging Face's `tokenizers` reading each folder's `tokenizer.json`.

A converted folder's `tokenizer/`, `tokenizer_2/` (CLIP byte-level BPE) and `tokenizer_3/` (T5 Unigram) were saved by
transformers, whose `tokenizer.json` holds the whole pipeline (normalizer, pre-tokenizer, model, special tokens).
`TextTokenizer` runs it with the call the runtime makes of a transformers tokenizer, `tokenizer(prompts,
padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids`, and gives the same ids
(tests/test_torch_free.py compares long, empty, whitespace-only, unicode and punctuation-heavy prompts).

Imports numpy, `tokenizers` and the layout.
"""

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from ..core.layout import incomplete_model_error, read_json

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
PADDING = ("longest", "max_length")  # and False / "do_not_pad"
CLEAN_UPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"))
CLEAN_UPS += ((" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))  # transformers' order


@dataclass
class TokenizerOutput:
    input_ids: np.ndarray  # (B, L) int64
    attention_mask: np.ndarray  # (B, L) int64, 0 on padding

    def __getitem__(self, name: str) -> np.ndarray:
        return getattr(self, name)


def _token_content(token) -> str | None:
    """A special token of `tokenizer_config.json`: a string, or an AddedToken dict with `content`."""
    return token.get("content") if isinstance(token, dict) else token


def clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization`: no space before punctuation and English contractions."""
    for spaced, joined in CLEAN_UPS:
        text = text.replace(spaced, joined)
    return text


class TextTokenizer:
    """A `tokenizers.Tokenizer` called like a transformers tokenizer (padding, truncation, numpy ids, decoding)."""

    def __init__(
        self,
        *,
        backend: Tokenizer,
        model_max_length: int,
        pad_token: str | None,
        padding_side: str = "right",
        truncation_side: str = "right",
        clean_up_tokenization_spaces: bool = False,
    ):
        self.backend = backend
        self.model_max_length = model_max_length
        self.pad_token = pad_token
        self.pad_token_id = None if pad_token is None else backend.token_to_id(pad_token)
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.end_of_word_suffix = getattr(backend.model, "end_of_word_suffix", None) or None  # CLIP's "</w>"
        self._lock = threading.Lock()  # padding and truncation are settings of the shared backend

    @classmethod
    def from_pretrained(cls, tokenizer_dir: str | Path, *, model_dir: Path | None = None) -> "TextTokenizer":
        """The tokenizer saved in `tokenizer_dir` (`tokenizer.json` + `tokenizer_config.json`)."""
        tokenizer_dir = Path(tokenizer_dir)
        model_dir = tokenizer_dir.parent if model_dir is None else model_dir
        tokenizer_json = tokenizer_dir / TOKENIZER_JSON
        if not tokenizer_json.is_file():
            reason = "is missing (transformers writes it when it saves a tokenizer)"
            raise FileNotFoundError(incomplete_model_error(tokenizer_json, model_dir, reason))
        config = read_json(tokenizer_dir / TOKENIZER_CONFIG, model_dir=model_dir)
        try:
            backend = Tokenizer.from_file(str(tokenizer_json))
        except Exception as error:  # the Rust library raises a plain Exception for a damaged file
            reason = f"could not be read as a tokenizer ({type(error).__name__}: {str(error).strip()[:300]})"
            raise ValueError(incomplete_model_error(tokenizer_json, model_dir, reason)) from error
        return cls(
            backend=backend,
            model_max_length=int(config.get("model_max_length", 512)),
            pad_token=_token_content(config.get("pad_token")),
            padding_side=config.get("padding_side", "right"),
            truncation_side=config.get("truncation_side", "right"),
            clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
        )

    def __call__(
        self,
        text: str | list[str],
        *,
        padding: bool | str = False,
        max_length: int | None = None,
        truncation: bool = False,
        return_tensors: str = "np",
        add_special_tokens: bool = True,
    ) -> TokenizerOutput:
        """Token ids of `text` (B, L) with special tokens, padded to `max_length` ("max_length") or to the longest
        prompt ("longest" or True), cut at `max_length` when `truncation` (default: `model_max_length`)."""
        prompts = [text] if isinstance(text, str) else list(text)
        padding = "longest" if padding is True else padding
        if padding not in (False, "do_not_pad", *PADDING):
            raise ValueError(f"`padding` must be False, True, 'longest' or 'max_length' but is {padding!r}.")
        if return_tensors != "np":
            raise ValueError(f"`return_tensors` must be 'np' (numpy ids) but is {return_tensors!r}.")
        if padding in PADDING and self.pad_token_id is None:
            raise ValueError(f"Asking to pad, but the tokenizer has no padding token (`pad_token` is {self.pad_token!r}).")
        if max_length is None and (truncation or padding == "max_length"):
            max_length = self.model_max_length
        with self._lock:
            if truncation:
                self.backend.enable_truncation(max_length, direction=self.truncation_side)
            else:
                self.backend.no_truncation()
            if padding in PADDING:
                length = max_length if padding == "max_length" else None
                self.backend.enable_padding(direction=self.padding_side, pad_id=self.pad_token_id, pad_token=self.pad_token, length=length)
            else:
                self.backend.no_padding()
            encodings = self.backend.encode_batch(prompts, add_special_tokens=add_special_tokens)
        lengths = {len(encoding.ids) for encoding in encodings}
        if len(lengths) > 1:
            raise ValueError(f"The prompts have {sorted(lengths)} tokens; pass `padding='longest'` or 'max_length' for one array.")
        return TokenizerOutput(
            input_ids=np.array([encoding.ids for encoding in encodings], dtype=np.int64).reshape(len(prompts), -1),
            attention_mask=np.array([encoding.attention_mask for encoding in encodings], dtype=np.int64).reshape(len(prompts), -1),
        )

    def decode(self, token_ids, *, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None) -> str:
        """The text of one sequence of ids, as transformers decodes it (CLIP's "</w>" become spaces)."""
        text = self.backend.decode([int(token) for token in token_ids], skip_special_tokens=skip_special_tokens)
        if self.end_of_word_suffix:
            text = text.replace(self.end_of_word_suffix, " ").strip()
        clean_up = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        return clean_up_tokenization(text) if clean_up else text

    def batch_decode(self, sequences, *, skip_special_tokens: bool = False) -> list[str]:
        """`decode` of each row of `sequences` (transformers' batch_decode does not clean up spaces)."""
        return [self.decode(row, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False) for row in sequences]


def load_tokenizer(model_dir: str | Path, *, name: str) -> TextTokenizer:
    """The tokenizer in `model_dir / name` (`tokenizer`, `tokenizer_2` or `tokenizer_3`), without transformers."""
    model_dir = Path(model_dir)
    tokenizer_dir = model_dir / name
    if not tokenizer_dir.is_dir():
        raise FileNotFoundError(incomplete_model_error(tokenizer_dir, model_dir, "is missing"))
    return TextTokenizer.from_pretrained(tokenizer_dir, model_dir=model_dir)
