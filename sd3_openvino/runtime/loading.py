"""Loading a converted folder into a pipeline, and pipelines that share another's compiled models (diffusers'
`DiffusionPipeline.from_pretrained` and `from_pipe`), as `PipelineLoaderMixin`.

Everything loads from local files. Imports the layout and `runtime/submodels.py`; `openvino` is imported when a
folder is loaded.
"""

import time
from pathlib import Path

from ..core.layout import PIPELINE_SUBMODELS, TOKENIZERS, check_sd3_index, has_component, read_model_index
from .shapes import DEFAULT_MAX_COMPILED_SHAPES, check_shapes_policy
from .submodels import OVSubmodel, check_devices, device_for, load_scheduler, load_tokenizer, submodel_ov_config


def shared_ov_config(submodel: OVSubmodel) -> dict:
    """`submodel`'s OpenVINO properties for another submodel: all but its own weights file (`WEIGHTS_PATH`)."""
    return {key: value for key, value in submodel.ov_config.items() if key != "WEIGHTS_PATH"}


class PipelineLoaderMixin:
    """`from_pretrained`, `from_pipe`, `compile` and `submodels` for a pipeline class whose `__init__` takes
    `submodels`, `tokenizers`, `scheduler` and `model_dir`, and whose `submodel_names` says which submodels it runs."""

    submodel_names: tuple[str, ...]

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        *,
        device: str | dict[str, str] = "CPU",
        ov_config: dict | None = None,
        cache_dir: str | Path | None = None,
        compile: bool = True,
        shapes: str = "auto",
        max_compiled_shapes: int = DEFAULT_MAX_COMPILED_SHAPES,
        fold_text_padding: bool = True,
    ) -> "PipelineLoaderMixin":
        """Load a folder written by `convert_sd3` (or optimum-cli) and compile its models for `device`.

        `device` is one OpenVINO device for all submodels ("CPU", "GPU", "AUTO") or a dict by submodel name
        (`{"transformer": "GPU", "text_encoder": "CPU"}`; unnamed submodels run on CPU). `ov_config` holds
        OpenVINO properties for all submodels (`{"INFERENCE_PRECISION_HINT": "f32"}`) or a dict of them by
        submodel name. Text encoders on a GPU run in f32 unless `ov_config` says otherwise. `cache_dir` keeps
        OpenVINO's compiled models there (weightless on CPU: a few MB each), so later loads, and sizes seen before,
        skip most of the compilation. With `compile=False` the models are compiled on first use (or call `compile()`
        after `reshape()`). Everything loads from local files only.

        `shapes` is the shapes policy (`runtime/shapes.py`): "auto" (default) compiles the transformer and VAE decoder
        for each call's size and batch when it comes (static shapes: about half the memory at 1024x1024, a little
        faster), keeping `max_compiled_shapes` of them compiled (each a copy of the weights); "dynamic" compiles
        every model once for any size; "static" is `reshape()` for the default call.

        `fold_text_padding` (on by default) runs the text's repeated trailing tokens (without T5: the `max_sequence_length`
        zero rows where T5's would be) as one token weighted by their count in the joint attention: the same images as
        diffusers (exact up to float rounding) from 78 text tokens instead of 333 (`runtime/text_folding.py`).
        """
        import openvino as ov

        check_shapes_policy(shapes, max_compiled_shapes=max_compiled_shapes)
        if not isinstance(fold_text_padding, bool):
            raise TypeError(f"`fold_text_padding` has to be True or False but is {fold_text_padding!r:.80}.")
        started = time.perf_counter()
        model_dir = Path(model_dir)
        model_index = read_model_index(model_dir)
        check_sd3_index(model_index, where=f"`{model_dir}`")
        core = ov.Core()
        check_devices(device, available=core.available_devices)
        has_t5 = has_component(model_index, "text_encoder_3")
        submodels = {}
        for name in cls.submodel_names:
            if name == "text_encoder_3" and not has_t5:
                continue
            submodel_device = device_for(device, name)
            config = submodel_ov_config(ov_config, submodel=name, device=submodel_device, cache_dir=cache_dir)
            submodels[name] = OVSubmodel(model_dir / name, core=core, device=submodel_device, ov_config=config)
        tokenizers = {name: load_tokenizer(model_dir, name=name) for name in TOKENIZERS if name != "tokenizer_3" or has_t5}
        scheduler = load_scheduler(model_dir, model_index=model_index)
        pipe = cls(submodels=submodels, tokenizers=tokenizers, scheduler=scheduler, model_dir=model_dir)
        pipe.metrics_recorder.read_time = time.perf_counter() - started  # `load_time` adds each first compilation
        pipe.fold_text_padding = fold_text_padding
        pipe.enable_text_folding()
        pipe.set_shapes_policy(shapes, max_compiled_shapes=max_compiled_shapes)
        if compile:
            pipe.compile()
        return pipe

    @classmethod
    def from_pipe(cls, pipe: "PipelineLoaderMixin") -> "PipelineLoaderMixin":
        """A pipeline of this class that shares `pipe`'s compiled submodels, tokenizers and call lock (diffusers'
        `from_pipe`): nothing is compiled again; a submodel `pipe` lacks (the VAE encoder) is loaded from its folder.
        The static shapes of `pipe.reshape` hold here too (the compiled models are shared, and their shapes with them)."""
        if not isinstance(pipe, PipelineLoaderMixin):
            raise TypeError(
                f"`pipe` has to be a loaded pipeline (e.g. an `OVStableDiffusion3Pipeline`) but is {type(pipe).__name__}: "
                f"{pipe!r:.80}; to load a converted folder use `{cls.__name__}.from_pretrained(folder)`."
            )
        submodels = dict(pipe.submodels)
        read_time = pipe.metrics_recorder.read_time
        for name in cls.submodel_names:
            if name not in submodels and name != "text_encoder_3":
                decoder = pipe.vae_decoder
                submodels[name] = OVSubmodel(pipe.model_dir / name, core=decoder.core, device=decoder.device, ov_config=shared_ov_config(decoder))
                read_time += submodels[name].read_time
        tokenizers = {"tokenizer": pipe.tokenizer, "tokenizer_2": pipe.tokenizer_2, "tokenizer_3": pipe.tokenizer_3}
        scheduler = pipe.scheduler.__class__.from_config(pipe.scheduler.config)  # schedulers hold per-call state
        new_pipe = cls(submodels=submodels, tokenizers=tokenizers, scheduler=scheduler, model_dir=pipe.model_dir)
        new_pipe._call_lock = pipe._call_lock  # the shared infer requests serve one call at a time
        new_pipe.shapes, new_pipe._static_shape = pipe.shapes, pipe._static_shape  # the shared models keep their shapes policy
        new_pipe.on_compile, new_pipe.fold_text_padding = pipe.on_compile, pipe.fold_text_padding
        new_pipe.vae_tiling = pipe.vae_tiling  # diffusers' `from_pipe` shares the VAE and its tiling
        new_pipe.prompt_cache, new_pipe.release_text_encoders = pipe.prompt_cache, pipe.release_text_encoders  # and the text encoders' options
        new_pipe.lora = pipe.lora  # and the LoRA adapters of the models it shares
        new_pipe.previews = pipe.previews  # and the fitted preview map and tiny decoder
        new_pipe.set_progress_bar_config(**pipe.progress_bar_config)
        new_pipe.metrics_recorder.read_time = read_time  # its own metrics; `load_time` counts the shared folder's reading
        new_pipe.metrics_recorder.track_memory = pipe.metrics_recorder.track_memory
        return new_pipe

    def clone(self) -> "PipelineLoaderMixin":
        """A pipeline of this class that generates at the same time as this one (in another thread) on the same compiled
        models, so the weights are held once (openvino.genai's `clone()`): its own infer requests, scheduler, call lock,
        LoRA adapter choice (the adapters loaded so far, their weights set independently), prompt cache and metrics.

        The clones share the submodels' graphs: what changes a graph (`load_lora_weights` for layers no adapter had yet,
        `unload_lora_weights`, a ControlNet's `from_pipe` on a plain pipeline) raises a ValueError while clones live, so do
        it before cloning. `from_pipe` pipelines share everything with their source, lock included: one call at a time."""
        submodels = {name: submodel.clone() for name, submodel in self.submodels.items()}
        tokenizers = {"tokenizer": self.tokenizer, "tokenizer_2": self.tokenizer_2, "tokenizer_3": self.tokenizer_3}
        scheduler = self.scheduler.__class__.from_config(self.scheduler.config)
        twin = self.__class__(submodels=submodels, tokenizers=tokenizers, scheduler=scheduler, model_dir=self.model_dir)
        twin.shapes, twin._static_shape, twin.on_compile, twin.vae_tiling = self.shapes, self._static_shape, self.on_compile, self.vae_tiling
        twin.fold_text_padding = self.fold_text_padding
        if self.prompt_cache is not None:
            twin.enable_prompt_cache(self.prompt_cache.max_prompts)
        twin.release_text_encoders = self.release_text_encoders
        twin.lora = self.lora.copy_for(twin.submodels)
        twin.ip_adapter = self.ip_adapter.clone() if self.ip_adapter is not None else None
        twin.set_progress_bar_config(**self.progress_bar_config)
        twin.metrics_recorder.read_time = self.metrics_recorder.read_time
        twin.metrics_recorder.track_memory = self.metrics_recorder.track_memory
        self.clone_extras(twin)
        return twin

    def clone_extras(self, twin: "PipelineLoaderMixin") -> None:
        """What a pipeline class adds to `clone` (the ControlNet pipelines: their ControlNets)."""

    def compile(self) -> None:
        """Compile every submodel now instead of on first use; under the "auto" shapes policy the transformer and VAE
        decoder wait for the first call (they compile for its size)."""
        waits_for_call = (self.transformer, self.vae_decoder) if self.shapes == "auto" else ()
        for submodel in self.submodels.values():
            if submodel.request is None and not (submodel in waits_for_call and submodel.shapes is None):
                submodel.compile()

    @property
    def submodels(self) -> dict[str, OVSubmodel]:
        """The loaded submodels by name (no `text_encoder_3` without T5)."""
        candidates = {name: getattr(self, name, None) for name in PIPELINE_SUBMODELS + ("vae_encoder",)}
        return {name: submodel for name, submodel in candidates.items() if submodel is not None}
