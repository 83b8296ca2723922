"""The same converted folder in openvino.genai's C++ pipelines, with this project's defaults.

Imports the layout and `sd3_lora`'s file name: openvino.genai reads the folder itself.
"""

from pathlib import Path

from ..core.layout import (
    CONFIG_JSON,
    GENERATION_DEFAULTS,
    OV_TOKENIZER_XML,
    TOKENIZERS,
    SizeRules,
    has_component,
    incomplete_model_error,
    read_json,
    read_model_index,
)
from .lora import check_lora, lora_source

GENAI_TASKS = {"text-to-image": "Text2ImagePipeline", "image-to-image": "Image2ImagePipeline", "inpainting": "InpaintingPipeline"}


def genai_adapter_config(adapters: list[tuple[str | Path, float]]):
    """An `openvino_genai.AdapterConfig` holding each `(LoRA file or folder, alpha)` of `adapters`; the sources and
    alphas are checked as `check_lora` checks them (local files only: genai reads no hub ids)."""
    import openvino_genai

    config = openvino_genai.AdapterConfig()
    for source, alpha in check_lora(adapters, argument="`adapters` LoRA"):
        path = lora_source(source, argument="`adapters` LoRA")
        if not isinstance(path, Path):
            raise ValueError(f"`adapters` LoRA {source!r} has to be a local file or folder: openvino.genai reads no hub ids or state dicts.")
        config.add(openvino_genai.Adapter(str(path)), alpha)
    return config


def make_genai_pipeline(
    model_dir: str | Path,
    *,
    task: str = "text-to-image",
    device: str = "CPU",
    ov_config: dict | None = None,
    adapters: list[tuple[str | Path, float]] | None = None,
):
    """The openvino.genai pipeline for `task` ("text-to-image": `Text2ImagePipeline`, "image-to-image":
    `Image2ImagePipeline`, "inpainting": `InpaintingPipeline`) on a folder written by `convert_sd3`, with this
    project's defaults.

    The defaults (`GENERATION_DEFAULTS` and the model's native size) match `OVStableDiffusion3Pipeline.__call__`,
    so `pipe.generate(prompt, generator=openvino_genai.TorchGenerator(seed))` and
    `OVStableDiffusion3Pipeline(prompt, generator=torch.Generator().manual_seed(seed))` make the same image
    (within 1/255 with T5; without T5 genai's text conditioning differs from diffusers, see README).

    `adapters` (`[(lora_path, alpha), ...]`, diffusers' `.safetensors` files or the folders holding them) are
    active in every `generate`; `generate(..., adapters=genai_adapter_config([...]))` switches them. genai finds
    the transformer's layers by the module paths in our IR's node names (`__module.transformer_blocks.0...`).
    """
    import openvino_genai

    if task not in GENAI_TASKS:
        raise ValueError(f"`task` must be one of {list(GENAI_TASKS)} but is {task!r}.")
    model_dir = Path(model_dir)
    model_index = read_model_index(model_dir)
    for name in TOKENIZERS:
        tokenizer_xml = model_dir / name / OV_TOKENIZER_XML
        if has_component(model_index, name) and not tokenizer_xml.is_file():
            raise FileNotFoundError(incomplete_model_error(tokenizer_xml, model_dir, "is missing (openvino.genai needs it)"))
    rules = SizeRules.from_configs(
        transformer_config=read_json(model_dir / "transformer" / CONFIG_JSON, model_dir=model_dir),
        vae_config=read_json(model_dir / "vae_decoder" / CONFIG_JSON, model_dir=model_dir),
    )
    properties = dict(ov_config or {})
    if adapters:
        properties["adapters"] = genai_adapter_config(adapters)
    pipe = getattr(openvino_genai, GENAI_TASKS[task])(model_dir, device, **properties)
    config = pipe.get_generation_config()
    config.num_inference_steps = GENERATION_DEFAULTS.num_inference_steps
    config.guidance_scale = GENERATION_DEFAULTS.guidance_scale
    config.max_sequence_length = GENERATION_DEFAULTS.max_sequence_length
    config.height = config.width = rules.default
    pipe.set_generation_config(config)
    return pipe
