"""An interactive Gradio demo for Stable Diffusion 3 with OpenVINO.

    from gradio_helper import make_demo

    demo = make_demo(pipeline)  # an `OVStableDiffusion3Pipeline` (or diffusers' `StableDiffusion3Pipeline`)
    demo.launch()  # inline in Jupyter; `demo.close()` stops it

Compiled OpenVINO models are not re-entrant, so the demo runs one generation at a time per pipeline and queues
the other requests. Bad input becomes a readable `gr.Error` in the UI. The denoising steps show as a progress
bar, and the Stop button ends the running generation after its current step.

Standalone: `python gradio_helper.py MODEL_DIR [--device CPU] [--port N] [--share]` serves on 127.0.0.1 only.
"""

import argparse
import logging
import random
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

MAX_SEED = 2**31 - 1  # the largest seed a gr.Number and every torch generator accept
EXAMPLE_PROMPTS = (
    "A raccoon trapped inside a glass jar full of colorful candies, the background is steamy with vivid colors",
    "a photo of a cat holding a sign that says hello world",
    "an astronaut riding a horse on the moon, digital art",
    "a watercolor painting of a lighthouse at sunset",
    "a cozy cabin in the snowy mountains, warm light in the windows",
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SizeLimits:
    """Image sides the pipeline accepts, in pixels: multiples of `multiple` from `multiple` to `maximum`."""

    multiple: int  # vae_scale_factor * patch_size: one latent patch
    maximum: int  # pos_embed_max_size patches
    default: int  # the model's native size

    @classmethod
    def of(cls, pipeline) -> "SizeLimits":
        """Read the limits from the pipeline's configs (the same rule as `check_inputs` of the pipeline)."""
        multiple = pipeline.vae_scale_factor * pipeline.patch_size
        return cls(
            multiple=multiple,
            maximum=pipeline.transformer.config["pos_embed_max_size"] * multiple,
            default=pipeline.default_sample_size * pipeline.vae_scale_factor,
        )

    def snap(self, side: int) -> int:
        """The nearest accepted side to `side`."""
        return min(max(round(side / self.multiple) * self.multiple, self.multiple), self.maximum)


def _as_int(value, *, name: str, minimum: int, maximum: int | None = None) -> int:
    """`value` (a number from a UI field, maybe a float or None) as an int in range, or a ValueError."""
    if value is None or isinstance(value, bool) or not float(value).is_integer():
        raise ValueError(f"`{name}` has to be a whole number but is {value!r}.")
    if int(value) < minimum or (maximum is not None and int(value) > maximum):
        upper = f" and {maximum}" if maximum is not None else " or more"
        raise ValueError(f"`{name}` has to be between {minimum}{upper} but is {int(value)}.")
    return int(value)


class GenerationRunner:
    """Runs a pipeline for the demo: checks the request, one generation at a time, progress, and stop.

    Plain Python (no Gradio), so it can be tested and reused without a UI.
    """

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.lock = threading.Lock()  # the compiled models hold one infer request each: never run two calls at once
        self._stop = threading.Event()
        self._owner: str | None = None  # who started the running generation (a Gradio session)

    def generate(
        self,
        *,
        prompt: str,
        negative_prompt: str = "",
        seed: int = 0,
        randomize_seed: bool = False,
        width: int,
        height: int,
        guidance_scale: float,
        num_inference_steps: int,
        on_step: Callable[[int, int], None] | None = None,
        owner: str | None = None,
    ):
        """Generate one image; return `(image, seed used)`. Bad input raises a ValueError or TypeError.

        `on_step(done, total)` is called after every denoising step. Waits while another generation runs.
        """
        import torch

        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("The prompt is empty: describe the image you want, e.g. 'a photo of a cat'.")
        seed = (
            random.randint(0, MAX_SEED) if randomize_seed else _as_int(seed, name="seed", minimum=0, maximum=MAX_SEED)
        )
        width, height = (_as_int(value, name=name, minimum=1) for value, name in ((width, "width"), (height, "height")))
        num_inference_steps = _as_int(num_inference_steps, name="num_inference_steps", minimum=1)

        def on_step_end(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
            if on_step is not None:
                on_step(step + 1, num_inference_steps)
            if self._stop.is_set():
                pipe._interrupt = True
            return callback_kwargs

        with self.lock:
            self._stop.clear()
            self._owner = owner
            try:
                image = self.pipeline(
                    prompt=prompt,
                    negative_prompt=negative_prompt or None,
                    width=width,
                    height=height,
                    guidance_scale=float(guidance_scale),
                    num_inference_steps=num_inference_steps,
                    generator=torch.Generator().manual_seed(seed),
                    callback_on_step_end=on_step_end,
                ).images[0]
            finally:
                self._owner = None
        return image, seed

    def stop(self, *, owner: str | None = None) -> None:
        """Stop the running generation after its current step (only if `owner` started it, when given)."""
        if owner is None or owner == self._owner:
            self._stop.set()


def make_demo(
    pipeline,
    *,
    examples: list[str] | None = None,
    title: str = "Stable Diffusion 3 with OpenVINO",
    height: int | None = None,
    width: int | None = None,
    num_inference_steps: int = 28,
    guidance_scale: float = 7.0,
    max_inference_steps: int = 50,
):
    """Build (without launching) a `gr.Blocks` text-to-image demo for an SD3 pipeline.

    `examples` are prompts to offer (default: `EXAMPLE_PROMPTS`). `height`, `width` (default: the model's
    native size), `num_inference_steps` and `guidance_scale` are the initial values of the controls. The size
    sliders step by the model's size multiple and stop at its largest size. The event is served as the API
    endpoint `/generate` (inputs: prompt, negative prompt, seed, randomize seed, width, height, guidance
    scale, steps; outputs: image, seed used).
    """
    import gradio as gr

    runner = GenerationRunner(pipeline)
    limits = SizeLimits.of(pipeline)
    examples = list(EXAMPLE_PROMPTS if examples is None else examples)

    def generate(
        prompt: str,
        negative_prompt: str,
        seed: float,
        randomize_seed: bool,
        width: float,
        height: float,
        guidance_scale: float,
        num_inference_steps: float,
        request: gr.Request,
        progress=gr.Progress(),
    ):
        def on_step(done: int, total: int) -> None:
            progress((done, total), desc="Denoising", unit="steps")

        try:
            return runner.generate(
                prompt=prompt,
                negative_prompt=negative_prompt,
                seed=seed,
                randomize_seed=randomize_seed,
                width=width,
                height=height,
                guidance_scale=guidance_scale,
                num_inference_steps=num_inference_steps,
                on_step=on_step,
                owner=request.session_hash if request else None,
            )
        except (ValueError, TypeError) as error:
            raise gr.Error(str(error), title="Invalid input", print_exception=False) from error
        except Exception as error:  # an OpenVINO or memory error: say what failed instead of a bare "Error"
            logger.exception("Generation failed")
            raise gr.Error(f"Generation failed ({type(error).__name__}: {error}). See the server log.") from error

    def stop(request: gr.Request) -> None:
        runner.stop(owner=request.session_hash if request else None)

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"# {title}")
        with gr.Row(equal_height=True):
            prompt = gr.Textbox(
                label="Prompt",
                placeholder="Describe the image, then press Enter",
                max_lines=1,
                scale=5,
                elem_id="prompt",
            )
            run = gr.Button("Run", variant="primary", scale=0, min_width=100, elem_id="run")
            stop_button = gr.Button("Stop", variant="stop", scale=0, min_width=100, elem_id="stop")
        result = gr.Image(label="Result", type="pil", format="png", interactive=False, elem_id="result")
        with gr.Accordion("Advanced settings", open=False):
            negative_prompt = gr.Textbox(
                label="Negative prompt", placeholder="What the image should not show", max_lines=1
            )
            with gr.Row():
                seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED)
                randomize_seed = gr.Checkbox(label="Randomize seed", value=True)
            with gr.Row():
                slider = dict(minimum=limits.multiple, maximum=limits.maximum, step=limits.multiple)
                width_slider = gr.Slider(label="Width", value=limits.snap(width or limits.default), **slider)
                height_slider = gr.Slider(label="Height", value=limits.snap(height or limits.default), **slider)
            with gr.Row():
                guidance = gr.Slider(label="Guidance scale", minimum=0.0, maximum=20.0, step=0.1, value=guidance_scale)
                steps = gr.Slider(
                    label="Inference steps", minimum=1, maximum=max_inference_steps, step=1, value=num_inference_steps
                )
        used_seed = gr.Number(label="Seed used", precision=0, interactive=False, elem_id="seed-used")
        gr.Examples(examples=[[example] for example in examples], inputs=[prompt], label="Example prompts")

        event = gr.on(
            triggers=[run.click, prompt.submit],
            fn=generate,
            inputs=[prompt, negative_prompt, seed, randomize_seed, width_slider, height_slider, guidance, steps],
            outputs=[result, used_seed],
            api_name="generate",
            concurrency_limit=1,  # one generation at a time; the queue answers the others in turn
        )
        stop_button.click(fn=stop, inputs=None, outputs=None, cancels=[event], queue=False, api_name="stop")
    return demo


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gradio_helper.py", description="Serve the SD3 OpenVINO demo.")
    parser.add_argument("model_dir", type=Path, help="a folder written by convert_sd3 (or optimum-cli)")
    parser.add_argument("--device", default="CPU", help="OpenVINO device: CPU, GPU, AUTO, ...")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=None, help="default: the first free port from 7860")
    parser.add_argument("--share", action="store_true", help="also make a public gradio.live link")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python gradio_helper.py`; returns the exit status."""
    from sd3_helper import OVStableDiffusion3Pipeline

    args = _parse_args(argv)
    try:
        pipeline = OVStableDiffusion3Pipeline.from_pretrained(args.model_dir, device=args.device)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    pipeline.set_progress_bar_config(disable=True)  # the UI shows the progress
    make_demo(pipeline).launch(server_name=args.host, server_port=args.port, share=args.share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
