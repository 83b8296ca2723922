"""What users pass to the pipelines and get back, numpy or torch, read without importing torch.

The pipelines work in numpy. A call given torch objects (a `torch.Generator`, torch tensors as latents, embeddings
or images) gets torch tensors back where diffusers gives them (latents, the callback's tensors): `wants_torch` tells,
`to_torch` converts, and only then is torch imported. A generator may also be an int seed or an
`sd3_noise.TorchCPUGenerator`, which give `torch.Generator().manual_seed(seed)`'s noise without torch.

Imports numpy, the noise and the image processing modules.
"""

import numpy as np

from .image_processing import is_torch_tensor
from .noise import TorchCPUGenerator, is_torch_generator


def as_array(value) -> np.ndarray | None:
    """`value` (a numpy array, a CPU torch tensor or a nested list) as float32 numpy; None stays None."""
    if value is None:
        return None
    return np.asarray(value.detach().cpu().numpy() if is_torch_tensor(value) else value, dtype=np.float32)


def wants_torch(*values) -> bool:
    """True when one of `values` (or an item of a list among them) is a torch tensor or a `torch.Generator`. A call
    given torch objects returns latents and gives its callback tensors as torch tensors, as diffusers does; a
    call without them works in numpy and never imports torch."""
    items = [item for value in values for item in (value if isinstance(value, list) else [value])]
    return any(is_torch_tensor(item) or is_torch_generator(item) for item in items)


def to_torch(array: np.ndarray):
    """A numpy array as a torch tensor sharing its memory (imports torch: only calls given torch objects get here)."""
    import torch

    return torch.from_numpy(np.asarray(array, order="C"))


def is_seed(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def as_generator(generator):
    """`generator` with int seeds replaced by `TorchCPUGenerator`s: one seed is one random stream for the whole call
    (the VAE sample, then the noise), the stream `torch.Generator().manual_seed(seed)` gives."""
    if isinstance(generator, list):
        return [as_generator(item) for item in generator]
    return TorchCPUGenerator(int(generator)) if is_seed(generator) else generator


def check_generator(generator) -> None:
    """Raise a TypeError unless `generator` is None, an int seed, a `TorchCPUGenerator`, a `torch.Generator`, or a
    list of these (no None), one per image."""
    for item in generator if isinstance(generator, list) else [generator]:
        if not ((item is None and not isinstance(generator, list)) or is_seed(item) or isinstance(item, TorchCPUGenerator) or is_torch_generator(item)):
            raise TypeError(
                "`generator` has to be None, an int seed, a `torch.Generator`, an `sd3_noise.TorchCPUGenerator`, or a list "
                f"of these (one per image), but is {type(item).__name__}: {item!r:.80}."
            )
