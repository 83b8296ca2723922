"""Stable Diffusion 3 with OpenVINO: convert a checkpoint, run it with a small OpenVINO pipeline.

The one place to import the project's API from:

    from sd3_helper import make_tiny_sd3, load_sd3_pipeline, convert_sd3, OVStableDiffusion3Pipeline

    convert_sd3("stabilityai/stable-diffusion-3-medium-diffusers", "sd3-ov", weight_format="int8")
    pipe = OVStableDiffusion3Pipeline.from_pretrained("sd3-ov", device="CPU")
    image = pipe("a photo of a cat", num_inference_steps=28, generator=42).images[0]

Every name is imported on first use, from the package `sd3_openvino` whose folders are the layers (see its
`__init__`): `import sd3_helper` and the pipelines load numpy and OpenVINO only; `convert_sd3`, `quantize_sd3`,
`make_tiny_sd3` and `load_sd3_pipeline` load torch, diffusers, transformers and NNCF when used.

Command line: `python sd3_helper.py {tiny-model,convert,generate,tiny-controlnet,convert-controlnet,tiny-ip-adapter} --help`.
"""

import importlib
import sys

# name -> the module of `sd3_openvino` that defines it
_HOMES = {
    "OVStableDiffusion3Pipeline": "runtime.pipeline",
    "SD3PipelineOutput": "runtime.pipeline",
    "OVStableDiffusion3Img2ImgPipeline": "runtime.image_pipelines",
    "OVStableDiffusion3InpaintPipeline": "runtime.image_pipelines",
    "OVStableDiffusion3ControlNetPipeline": "runtime.controlnet_pipelines",
    "OVStableDiffusion3ControlNetInpaintingPipeline": "runtime.controlnet_pipelines",
    "canny_edges": "runtime.control_images",
    "blurred": "runtime.control_images",
    "depth_map": "runtime.control_images",
    "OVSubmodel": "runtime.submodels",
    "TaylorSeerConfig": "runtime.steps",
    "SkipLayerGuidance": "runtime.steps",
    "PerformanceMetrics": "runtime.metrics",
    "LatentRGBMap": "runtime.previews",
    "make_genai_pipeline": "runtime.genai",
    "genai_adapter_config": "runtime.genai",
    "load_adapters": "runtime.lora",
    "lora_argument": "runtime.lora",
    "check_lora": "runtime.lora",
    "psnr": "runtime.image_processing",
    "WEIGHT_FORMATS": "core.layout",
    "GENERATION_DEFAULTS": "core.layout",
    "GenerationDefaults": "core.layout",
    "SizeRules": "core.layout",
    "folder_size": "core.layout",
    "staged_dir": "core.files",
    "linear_node_name": "core.layout",
    "MODEL_PRESETS": "core.presets",
    "ModelPreset": "core.presets",
    "get_preset": "core.presets",
    "preset_for": "core.presets",
    "presets_table": "core.presets",
    "convert_sd3": "export.convert",
    "quantize_sd3": "export.quantization",
    "load_sd3_pipeline": "export.loading",
    "convert_preview_decoder": "export.preview_decoder",
    "make_tiny_sd3": "export.tiny_model",
    "make_tiny_lora": "export.tiny_model",
    "make_tiny_sd3_controlnet": "export.tiny_model",
    "convert_sd3_controlnet": "export.controlnet",
    "make_tiny_ip_adapter": "export.tiny_model",
    "convert_sd3_ip_adapter": "export.ip_adapter",
    "make_tiny_taesd": "export.tiny_model",
    "train_clip_tokenizer": "export.tiny_model",
    "main": "export.cli",
}

__all__ = [
    "make_tiny_sd3",
    "make_tiny_lora",
    "load_sd3_pipeline",
    "convert_sd3",
    "quantize_sd3",
    "OVStableDiffusion3Pipeline",
    "OVStableDiffusion3Img2ImgPipeline",
    "OVStableDiffusion3InpaintPipeline",
    "OVStableDiffusion3ControlNetPipeline",
    "OVStableDiffusion3ControlNetInpaintingPipeline",
    "convert_sd3_controlnet",
    "make_tiny_sd3_controlnet",
    "convert_sd3_ip_adapter",
    "make_tiny_ip_adapter",
    "canny_edges",
    "blurred",
    "depth_map",
    "OVSubmodel",
    "SD3PipelineOutput",
    "TaylorSeerConfig",
    "SkipLayerGuidance",
    "PerformanceMetrics",
    "make_genai_pipeline",
    "genai_adapter_config",
    "WEIGHT_FORMATS",
    "MODEL_PRESETS",
    "ModelPreset",
    "get_preset",
    "preset_for",
    "presets_table",
    "GENERATION_DEFAULTS",
    "GenerationDefaults",
    "SizeRules",
    "folder_size",
    "psnr",
    "staged_dir",
    "train_clip_tokenizer",
    "linear_node_name",
    "load_adapters",
    "convert_preview_decoder",
    "make_tiny_taesd",
    "LatentRGBMap",
]


def __getattr__(name: str):
    """Import `name` from its module the first time it is asked for (PEP 562), and keep it here."""
    if name not in _HOMES:
        raise AttributeError(f"module 'sd3_helper' has no attribute {name!r}; its API is {sorted(__all__)}")
    value = getattr(importlib.import_module(f"sd3_openvino.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


if __name__ == "__main__":
    sys.exit(__getattr__("main")())
