"""Stable Diffusion 3 on OpenVINO. The folders are the layers; each imports only those above it in this list:

    core/      the converted folder's layout and reading, safe writes, presets, defaults (standard library only)
    runtime/   the pipelines, torch-free: numpy, OpenVINO and the tokenizers package (text-to-image, image-to-image,
               inpainting, LoRA at run time, previews, VAE tiling, openvino.genai on the same folder)
    export/    checkpoint -> OpenVINO IR, int8-hybrid, LoRA fusing, the tiny offline checkpoints, `sd3_helper`'s
               command line (needs torch, diffusers, transformers and NNCF)
    demo/      the Gradio demo: request checks, the runner, the event handlers, the UI, its command line (needs only
               core/ and runtime/; the layer rules allow its command line a lazy import of export/)

Users import from the faces beside this package: `sd3_helper` (the API, lazily), `gradio_helper` (the demo) and
`notebook_utils` (the notebook's helpers). This file imports nothing, so `import sd3_openvino.runtime` costs what the
runtime costs.
"""
