"""An interactive Gradio demo for Stable Diffusion 3 with OpenVINO.

    from gradio_helper import make_demo

    demo = make_demo(pipeline)  # an `OVStableDiffusion3Pipeline` (or diffusers' `StableDiffusion3Pipeline`)
    demo.launch()  # inline in Jupyter; `demo.close()` stops it

Compiled OpenVINO models are not re-entrant, so the demo runs one generation at a time per pipeline and queues
the other requests. Every field is checked before anything runs, and bad input becomes a readable `gr.Error`
that names the field, its value and the fix. The denoising steps show as a progress bar, and the Stop button
ends the running generation after its current step.

Standalone: `python gradio_helper.py MODEL_DIR [--device CPU] [--port N] [--share]` serves on 127.0.0.1 only.
User mistakes (no model folder, a port in use) exit with status 2 and one `error: ...` line.
"""

import argparse
import logging
import math
import random
import socket
import sys
import threading
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Callable

from sd3_layout import GENERATION_DEFAULTS, SizeRules, read_model_index  # light: no torch, no OpenVINO

MAX_SEED = 2**31 - 1  # the largest seed a gr.Number and every torch generator accept
# T5 reads at most 512 tokens of a prompt (CLIP 77), about 2,000 characters of English at ~4 characters a token.
# Twice that is refused at once: no prompt the model can read is lost, while a pasted 10 MB text never reaches
# the tokenizers (issue 10: it took 32 s and grew the server from 1.1 to 2.9 GB, only to be cut to 512 tokens).
MAX_PROMPT_CHARS = 4_000
MAX_INFERENCE_STEPS = 50  # the steps slider's end (SD3 Medium's default is 28); each step is one transformer pass
MAX_GUIDANCE_SCALE = 20.0  # the guidance slider's end (SD3 Medium's default is 7)
DEFAULT_PORT, PORTS_TO_TRY = 7860, 100  # like gradio: the first free port of 7860..7959
EXAMPLE_PROMPTS = (
    "A raccoon trapped inside a glass jar full of colorful candies, the background is steamy with vivid colors",
    "a photo of a cat holding a sign that says hello world",
    "an astronaut riding a horse on the moon, digital art",
    "a watercolor painting of a lighthouse at sunset",
    "a cozy cabin in the snowy mountains, warm light in the windows",
)

logger = logging.getLogger(__name__)


def size_rules_of(pipeline) -> SizeRules:
    """The image sizes `pipeline` accepts: its `size_rules`, or read from its transformer's and VAE's configs."""
    rules = getattr(pipeline, "size_rules", None)
    if rules is not None:
        return rules
    vae = getattr(pipeline, "vae_decoder", None)
    if vae is None:
        vae = pipeline.vae  # diffusers' `StableDiffusion3Pipeline`
    return SizeRules.from_configs(transformer_config=pipeline.transformer.config, vae_config=vae.config)


# ----------------------------------------------------------------------------------------------------------
# Checks of the request: each names the field, its value and the fix
# ----------------------------------------------------------------------------------------------------------


def _check_text(value, *, name: str) -> str:
    """`value` (a text field, maybe None when left empty) as a str of at most `MAX_PROMPT_CHARS` characters."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"`{name}` has to be a str but is {type(value).__name__}: {value!r:.80}.")
    if len(value) > MAX_PROMPT_CHARS:
        raise ValueError(
            f"`{name}` is {len(value):,} characters long; the limit is {MAX_PROMPT_CHARS:,} "
            "(the text encoders read at most 512 tokens). Shorten it."
        )
    return value


def _as_number(value, *, name: str) -> float:
    """`value` as a float, or a TypeError naming `name` for a str, a bool, None or another non-number."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"`{name}` has to be a number but is {type(value).__name__}: {value!r:.80}.")
    return float(value)


def _as_whole(value, *, name: str) -> int:
    """`value` (a number from a UI field, maybe a whole float) as an int, or a ValueError or TypeError."""
    number = _as_number(value, name=name)
    if not number.is_integer():
        raise ValueError(f"`{name}` has to be a whole number but is {value!r}.")
    return int(number)


def _as_int(value, *, name: str, minimum: int, maximum: int) -> int:
    """`value` as a whole number from `minimum` to `maximum`, or a ValueError or TypeError."""
    number = _as_whole(value, name=name)
    if not minimum <= number <= maximum:
        raise ValueError(f"`{name}` has to be between {minimum} and {maximum} but is {number}.")
    return number


def _as_finite(value, *, name: str, minimum: float, maximum: float) -> float:
    """`value` as a finite float in range, or a ValueError or TypeError."""
    number = _as_number(value, name=name)
    if not math.isfinite(number):
        raise ValueError(f"`{name}` has to be a finite number between {minimum} and {maximum} but is {value!r}.")
    if not minimum <= number <= maximum:
        raise ValueError(f"`{name}` has to be between {minimum} and {maximum} but is {number}.")
    return number


@dataclass(frozen=True)
class GenerationRequest:
    """One checked request of the demo, in the types the pipeline takes."""

    prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int
    guidance_scale: float
    num_inference_steps: int


class GenerationRunner:
    """Runs a pipeline for the demo: checks the request, one generation at a time, progress, and stop.

    Plain Python (no Gradio), so it can be tested and reused without a UI.
    """

    def __init__(self, pipeline, *, max_inference_steps: int = MAX_INFERENCE_STEPS):
        self.pipeline = pipeline
        self.size_rules = size_rules_of(pipeline)
        self.max_inference_steps = max_inference_steps
        self.lock = threading.Lock()  # the compiled models hold one infer request each: never run two calls at once
        self._stop = threading.Event()
        self._owner: str | None = None  # who started the running generation (a Gradio session)

    def check(
        self,
        *,
        prompt: str,
        negative_prompt: str | None = "",
        seed: int | None = 0,
        randomize_seed: bool = False,
        width: int,
        height: int,
        guidance_scale: float,
        num_inference_steps: int,
    ) -> GenerationRequest:
        """The request with every field checked; a ValueError or TypeError names the first bad field.

        The texts' lengths are checked first, so an over-long paste is refused before any other work. The seed
        may be left empty (None) when `randomize_seed` is set; a random one is drawn then.
        """
        prompt = _check_text(prompt, name="prompt")
        negative_prompt = _check_text(negative_prompt, name="negative_prompt")
        if not prompt.strip():
            raise ValueError("The prompt is empty: describe the image you want, e.g. 'a photo of a cat'.")
        if not isinstance(randomize_seed, bool):
            raise TypeError(f"`randomize_seed` has to be True or False but is {randomize_seed!r:.80}.")
        if not randomize_seed or seed is not None:
            seed = _as_int(seed, name="seed", minimum=0, maximum=MAX_SEED)
        width, height = _as_whole(width, name="width"), _as_whole(height, name="height")
        self.size_rules.check(height=height, width=width)  # names both sides and the nearest accepted ones
        return GenerationRequest(
            prompt=prompt,
            negative_prompt=negative_prompt,
            seed=random.randint(0, MAX_SEED) if randomize_seed else seed,
            width=width,
            height=height,
            guidance_scale=_as_finite(guidance_scale, name="guidance_scale", minimum=0.0, maximum=MAX_GUIDANCE_SCALE),
            num_inference_steps=_as_int(
                num_inference_steps, name="num_inference_steps", minimum=1, maximum=self.max_inference_steps
            ),
        )

    def generate(self, *, on_step: Callable[[int, int], None] | None = None, owner: str | None = None, **fields):
        """Generate one image; return `(image, seed used)`. `fields` are the request's fields, the keyword
        arguments of `check`; bad input raises a ValueError or TypeError at once.

        `on_step(done, total)` is called after every denoising step. Waits while another generation runs.
        """
        import torch

        request = self.check(**fields)

        def on_step_end(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
            if on_step is not None:
                on_step(step + 1, request.num_inference_steps)
            if self._stop.is_set():
                pipe._interrupt = True
            return callback_kwargs

        with self.lock:
            self._stop.clear()
            self._owner = owner
            try:
                image = self.pipeline(
                    prompt=request.prompt,
                    negative_prompt=request.negative_prompt or None,
                    width=request.width,
                    height=request.height,
                    guidance_scale=request.guidance_scale,
                    num_inference_steps=request.num_inference_steps,
                    generator=torch.Generator().manual_seed(request.seed),
                    callback_on_step_end=on_step_end,
                ).images[0]
            finally:
                self._owner = None
        return image, request.seed

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
    num_inference_steps: int = GENERATION_DEFAULTS.num_inference_steps,
    guidance_scale: float = GENERATION_DEFAULTS.guidance_scale,
    max_inference_steps: int = MAX_INFERENCE_STEPS,
):
    """Build (without launching) a `gr.Blocks` text-to-image demo for an SD3 pipeline.

    `examples` are prompts to offer (default: `EXAMPLE_PROMPTS`). `height`, `width` (default: the model's
    native size), `num_inference_steps` and `guidance_scale` are the initial values of the controls. The size
    sliders step by the model's size multiple and stop at its largest size. The event is served as the API
    endpoint `/generate` (inputs: prompt, negative prompt, seed, randomize seed, width, height, guidance
    scale, steps; outputs: image, seed used). Its inputs reach `GenerationRunner.check` as sent (Gradio's own
    conversion is off), so a bad value from an API client gets the same named error as one from the page.
    """
    import gradio as gr

    runner = GenerationRunner(pipeline, max_inference_steps=max_inference_steps)
    rules = runner.size_rules
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
                max_length=MAX_PROMPT_CHARS,  # the page stops typing there; `GenerationRunner.check` refuses API calls
                scale=5,
                elem_id="prompt",
            )
            run = gr.Button("Run", variant="primary", scale=0, min_width=100, elem_id="run")
            stop_button = gr.Button("Stop", variant="stop", scale=0, min_width=100, elem_id="stop")
        result = gr.Image(label="Result", type="pil", format="png", interactive=False, elem_id="result")
        with gr.Accordion("Advanced settings", open=False):
            negative_prompt = gr.Textbox(
                label="Negative prompt",
                placeholder="What the image should not show",
                max_lines=1,
                max_length=MAX_PROMPT_CHARS,
            )
            with gr.Row():
                seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED)
                randomize_seed = gr.Checkbox(label="Randomize seed", value=True)
            with gr.Row():
                slider = dict(minimum=rules.multiple, maximum=rules.maximum, step=rules.multiple)
                width_slider = gr.Slider(label="Width", value=rules.snap(width or rules.default), **slider)
                height_slider = gr.Slider(label="Height", value=rules.snap(height or rules.default), **slider)
            with gr.Row():
                guidance = gr.Slider(
                    label="Guidance scale", minimum=0.0, maximum=MAX_GUIDANCE_SCALE, step=0.1, value=guidance_scale
                )
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
            preprocess=False,  # Gradio's conversion fails on `width="abc"` with a bare "Error"; the runner names it
            concurrency_limit=1,  # one generation at a time; the queue answers the others in turn
        )
        stop_button.click(fn=stop, inputs=None, outputs=None, cancels=[event], queue=False, api_name="stop")
    return demo


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


class UsageError(Exception):
    """A mistake of the user's (a missing folder, a busy port): reported as one `error:` line, exit status 2."""


def _port(text: str) -> int:
    """`--port` as an int from 1 to 65535; argparse reports anything else with this message and exits 2."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"has to be a whole number from 1 to 65535 but is {text!r}")
    return int(text)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gradio_helper.py", description="Serve the SD3 OpenVINO demo.")
    parser.add_argument("model_dir", type=Path, help="a folder written by convert_sd3 (or optimum-cli)")
    parser.add_argument("--device", default="CPU", help="OpenVINO device: CPU, GPU, AUTO, ...")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument(
        "--port", type=_port, default=None, help=f"default: the first free port from {DEFAULT_PORT}"
    )
    parser.add_argument("--share", action="store_true", help="also make a public gradio.live link")
    return parser.parse_args(argv)


def port_is_free(*, host: str, port: int) -> bool:
    """True when a server can listen on `host:port` now (a bind test, as gradio's own; `host` may be a name)."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise UsageError(f"`--host` {host!r} is not an address of this machine ({error}). Try 127.0.0.1.") from error
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free for uvicorn too
        try:
            probe.bind(address)
        except OSError:
            return False
    return True


def choose_port(*, host: str, port: int | None) -> int:
    """`port` if it is free on `host`, else a UsageError; with no `port`, the first free one from `DEFAULT_PORT`."""
    if port is not None:
        if not port_is_free(host=host, port=port):
            raise UsageError(
                f"`--port` {port} on {host} is in use (is another demo still running?). "
                "Stop that server, pass another `--port`, or leave it out to take the first free port."
            )
        return port
    candidates = range(DEFAULT_PORT, DEFAULT_PORT + PORTS_TO_TRY)
    for candidate in candidates:
        if port_is_free(host=host, port=candidate):
            return candidate
    raise UsageError(
        f"ports {candidates.start}-{candidates.stop - 1} on {host} are all in use. Pass a free one with `--port`."
    )


def check_model_dir(model_dir: Path) -> None:
    """A UsageError naming `model_dir` if it is not a converted model folder (fast: before the model loads)."""
    try:
        read_model_index(model_dir)
    except (OSError, ValueError) as error:
        raise UsageError(str(error)) from error


def serve(args: argparse.Namespace) -> None:
    """Check the folder and the port (in a moment), then load the model (minutes) and serve until stopped."""
    check_model_dir(args.model_dir)
    port = choose_port(host=args.host, port=args.port)
    from sd3_helper import OVStableDiffusion3Pipeline

    try:
        pipeline = OVStableDiffusion3Pipeline.from_pretrained(args.model_dir, device=args.device)
    except (ValueError, OSError, RuntimeError) as error:  # a damaged or foreign folder, an unknown device
        raise UsageError(str(error)) from error
    pipeline.set_progress_bar_config(disable=True)  # the UI shows the progress
    demo = make_demo(pipeline)
    try:
        demo.launch(server_name=args.host, server_port=port, share=args.share)
    except OSError as error:  # another server took the port while the model loaded
        raise UsageError(f"cannot serve on {args.host}:{port}: {error}") from error


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python gradio_helper.py`; returns the exit status (2 for a mistake of the user's)."""
    args = _parse_args(argv)
    try:
        serve(args)
    except UsageError as error:
        print("error: " + " ".join(str(error).split("\n")), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
