"""The LoRA API of the pipelines, with diffusers' names and meanings (its `SD3LoraLoaderMixin`).

`LoraLoaderMixin` is mixed into `OVStableDiffusion3Pipeline`; it works on the pipeline's `lora` (a
`runtime/lora.py` `LoraAdapters`: the adapters as OpenVINO states of the submodels) and holds the pipeline's
`_call_lock` while it changes them, so that no call runs with half-written adapters.

Imports nothing of the project at run time (`LoraAdapters` for type hints only).
"""

import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .lora import LoraAdapters


class LoraLoaderMixin:
    """LoRA adapters at run time: load, switch, weigh, disable and remove them without converting the model again."""

    lora: "LoraAdapters"
    _call_lock: threading.RLock

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict: str | Path | dict, adapter_name: str | None = None) -> None:
        """Load a LoRA (a `.safetensors` file, its folder, a hub id or a state dict; every format diffusers'
        `lora_state_dict` reads) for the transformer and, where it has them, the CLIP text encoders, and make it the
        active adapter at weight 1. The first adapter on a layer compiles its submodel again; later switches
        (`set_adapters`) do not. `adapter_name` defaults to `default_<n>`. Reading the file imports torch.

        A local file loads whatever the hub settings (`HF_HUB_OFFLINE=1` too); a folder gives its
        `pytorch_lora_weights.safetensors` or its one `.safetensors` file. Only `namespace/name` is looked up on the
        hub: a path that does not exist is a FileNotFoundError at once, another type a TypeError."""
        with self._call_lock:
            self.lora.load(pretrained_model_name_or_path_or_dict, adapter_name=adapter_name)

    def set_adapters(self, adapter_names: str | list[str], adapter_weights: float | dict | list | None = None) -> None:
        """Make `adapter_names` the active adapters, each at its weight (None: 1; one number for all; a list, one per
        name; a dict by component, e.g. `{"transformer": 0.8, "text_encoder": 0.5}`). Writes states only. Weights are
        finite numbers from -100 to 100 (typical values are -2..2; larger ones overflow the activations)."""
        with self._call_lock:
            self.lora.set_adapters(adapter_names, adapter_weights)

    def disable_lora(self) -> None:
        """Generate without the adapters (they stay loaded, and `enable_lora` brings the same choice back)."""
        with self._call_lock:
            self.lora.enabled = False
            self.lora.write_states()

    def enable_lora(self) -> None:
        """Apply the active adapters again after `disable_lora`."""
        with self._call_lock:
            self.lora.enabled = True
            self.lora.write_states()

    def delete_adapters(self, adapter_names: str | list[str]) -> None:
        """Remove the named adapters."""
        with self._call_lock:
            self.lora.delete(adapter_names)

    def unload_lora_weights(self) -> None:
        """Remove every adapter; the submodels that had them get their original graphs back (compiled again on
        next use), so the base model runs without the adapters' extra operations."""
        with self._call_lock:
            self.lora.unload()

    def get_active_adapters(self) -> list[str]:
        """The active adapters (the transformer's), as diffusers' `get_active_adapters`."""
        return self.lora.active_adapters()

    def get_list_adapters(self) -> dict[str, list[str]]:
        """`{component: loaded adapter names}`, as diffusers' `get_list_adapters`."""
        return self.lora.list_adapters()
