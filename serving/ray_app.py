"""Serve a converted SD3 folder on Ray Serve: OpenAI-style images routes, replicas over processes and machines.

    python serving/ray_app.py MODEL_DIR --replicas 2 --port 8000          # a local Ray on 127.0.0.1, until Ctrl-C
    serve run serving/ray_serve.yaml                                       # the same from the config (MODEL_DIR in it)
    RAY_ADDRESS=http://head:8265 serve deploy serving/ray_serve.yaml       # the same config on a Ray cluster
    python serving/client.py --url http://127.0.0.1:8000/v1 --prompt "a photo of a cat" --output cat.png

Routes (JSON in, JSON out):
- `POST /v1/images/generations`: `prompt`, `n` (images, 1-4), `size` ("WIDTHxHEIGHT"), `response_format` ("b64_json"),
  and our extensions `negative_prompt`, `num_inference_steps`, `guidance_scale`, `rng_seed` (or `seed`), `step_cache`
  (the TaylorSeer cache, on by default), `adapter` (a LoRA adapter loaded at start, by name). `model` is accepted and
  ignored (one model per app), so `serving/client.py` works unchanged against OpenVINO Model Server and this app.
- `POST /v1/images/edits`: the same plus `image` (base64 PNG/JPEG), optional `mask` (base64, white repaints) and
  `strength`: image to image, or inpainting with a mask.
- `GET /health`: 200 with the replica's pid and model folder once its pipelines are loaded.

A bad request (an unknown field, a size the model refuses, a NaN guidance) is answered 400 with the pipeline's own named
error. Each replica holds one pipeline and `--clones - 1` clones (`pipe.clone()`: one set of weights), and takes as many
requests at once. Ray restarts a replica whose process dies; requests go to the live replicas meanwhile.
"""

import argparse
import base64
import io
import os
import sys
import threading
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's modules, wherever Ray runs this file

MAX_IMAGES = 4
USER_ERRORS = (ValueError, TypeError)


class ImagesRequest(BaseModel):
    """An OpenAI-style images request with the pipeline's options; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    model: str | None = None  # one model per app: accepted for OpenAI / OVMS clients, not used
    n: int = Field(default=1, ge=1, le=MAX_IMAGES)
    size: str | None = None  # "WIDTHxHEIGHT"; the model's native size when left out
    response_format: str = "b64_json"
    negative_prompt: str | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    rng_seed: int | None = None
    seed: int | None = None
    step_cache: bool = True
    adapter: str | None = None
    image: str | None = None  # /edits: base64 image
    mask: str | None = None  # /edits: base64 mask, white repaints
    strength: float | None = None


def parse_size(size: str | None) -> dict:
    """"768x512" -> {"width": 768, "height": 512}; None -> {} (the native size)."""
    if size is None:
        return {}
    width, separator, height = size.lower().partition("x")
    if not separator or not width.isdigit() or not height.isdigit():
        raise ValueError(f"`size` has to be 'WIDTHxHEIGHT' in pixels, e.g. '512x512', but is {size!r}.")
    return {"width": int(width), "height": int(height)}


def decode_image(data: str, *, name: str, mode: str):
    """A base64 image field as a PIL image, or a ValueError naming the field."""
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(io.BytesIO(base64.b64decode(data, validate=True))).convert(mode)
    except (ValueError, UnidentifiedImageError) as error:
        raise ValueError(f"`{name}` has to be a base64-encoded PNG or JPEG image ({error}).") from error


def call_arguments(request: ImagesRequest) -> dict:
    """The pipeline call's keyword arguments for `request` (the steps, guidance and seed only when given)."""
    from sd3_openvino.runtime.steps import DEFAULT_STEP_CACHE

    if request.response_format != "b64_json":
        raise ValueError(f"`response_format` has to be 'b64_json' but is {request.response_format!r}.")
    arguments = dict(prompt=request.prompt, negative_prompt=request.negative_prompt, num_images_per_prompt=request.n, **parse_size(request.size))
    arguments["taylorseer"] = DEFAULT_STEP_CACHE if request.step_cache else None
    seed = request.rng_seed if request.rng_seed is not None else request.seed
    optional = {"num_inference_steps": request.num_inference_steps, "guidance_scale": request.guidance_scale, "generator": seed}
    return {**arguments, **{key: value for key, value in optional.items() if value is not None}}


def encoded_images(images) -> list[dict]:
    """PIL images as the OpenAI response's `data` entries."""
    data = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data.append({"b64_json": base64.b64encode(buffer.getvalue()).decode()})
    return data


api = FastAPI(title="Stable Diffusion 3 on OpenVINO")


@api.exception_handler(RequestValidationError)
def bad_request(_request, error: RequestValidationError) -> JSONResponse:
    """A malformed request (a missing prompt, an unknown field, a string for `n`) is a 400 naming each field, as the
    pipeline's own errors are."""
    problems = "; ".join(f"`{'.'.join(str(part) for part in item['loc'][1:])}`: {item['msg']}" for item in error.errors())
    return JSONResponse(status_code=400, content={"detail": problems})


class PipelinePool:
    """One replica's pipelines: a pipeline, its `clones - 1` clones (one set of weights) and image-to-image / inpainting
    pipelines sharing them; each request takes a free set (`generate`). Plain Python: usable without Ray."""

    def __init__(self, model_dir: str, device: str = "CPU", clones: int = 1, lora: dict | None = None, ov_config: dict | None = None):
        from sd3_helper import OVStableDiffusion3Img2ImgPipeline, OVStableDiffusion3InpaintPipeline, OVStableDiffusion3Pipeline

        first = OVStableDiffusion3Pipeline.from_pretrained(model_dir, device=device, ov_config=ov_config)
        for name, source in (lora or {}).items():
            first.load_lora_weights(source, adapter_name=name)
        self.model_dir, self.pool, self.pool_lock = model_dir, [], threading.Lock()
        for pipe in [first] + [first.clone() for _ in range(clones - 1)]:
            pipe.set_progress_bar_config(disable=True)
            image_to_image = OVStableDiffusion3Img2ImgPipeline.from_pipe(pipe)
            self.pool.append({"text": pipe, "image": image_to_image, "inpaint": OVStableDiffusion3InpaintPipeline.from_pipe(image_to_image)})

    def generate(self, request: ImagesRequest, *, task: str, **extra) -> dict:
        """The response to `request` by the `task` pipeline ("text", "image", "inpaint") of a free set; a user's
        mistake is an HTTP 400 with the pipeline's message."""
        with self.pool_lock:
            pipelines = self.pool.pop()
        try:
            pipe = pipelines[task]
            if request.adapter is not None:
                pipe.set_adapters(request.adapter)
            images = pipe(**call_arguments(request), **extra).images
        except USER_ERRORS as error:
            raise HTTPException(status_code=400, detail=str(error)) from error
        finally:
            with self.pool_lock:
                self.pool.append(pipelines)
        return {"data": encoded_images(images)}


@serve.deployment
@serve.ingress(api)
class SD3Images:
    """One replica: a `PipelinePool` behind the routes; it takes as many requests at once as it has clones."""

    def __init__(self, model_dir: str, device: str = "CPU", clones: int = 1, lora: dict | None = None, ov_config: dict | None = None):
        self.pipelines = PipelinePool(model_dir, device, clones, lora, ov_config)

    @api.post("/v1/images/generations")
    def generations(self, request: ImagesRequest) -> dict:
        if request.image is not None or request.mask is not None:
            raise HTTPException(status_code=400, detail="`image` and `mask` belong to /v1/images/edits.")
        return self.pipelines.generate(request, task="text")

    @api.post("/v1/images/edits")
    def edits(self, request: ImagesRequest) -> dict:
        try:
            if request.image is None:
                raise ValueError("`image` is required: a base64-encoded PNG or JPEG.")
            extra = {"image": decode_image(request.image, name="image", mode="RGB")}
            if request.mask is not None:
                extra["mask_image"] = decode_image(request.mask, name="mask", mode="L")
            if request.strength is not None:
                extra["strength"] = request.strength
        except ValueError as error:
            raise HTTPException(status_code=400, detail=str(error)) from error
        return self.pipelines.generate(request, task="inpaint" if request.mask is not None else "image", **extra)

    @api.get("/health")
    def health(self) -> dict:
        return {"status": "ok", "pid": os.getpid(), "model_dir": self.pipelines.model_dir}


def build_app(args: dict):
    """Serve's application builder (`serve run serving.ray_app:build_app model_dir=...`, or the YAML config): `model_dir`,
    and optionally `device`, `clones`, `lora` ({name: path}), `ov_config`."""
    clones = int(args.get("clones", 1))
    options = {"max_ongoing_requests": clones}
    if "replicas" in args:  # the YAML config sets these in its `deployments` section instead
        options["num_replicas"] = int(args["replicas"])
    if "cpus_per_replica" in args:
        options["ray_actor_options"] = {"num_cpus": float(args["cpus_per_replica"])}
    return SD3Images.options(**options).bind(args["model_dir"], args.get("device", "CPU"), clones, args.get("lora"), args.get("ov_config"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--clones", type=int, default=1, help="pipelines per replica on one set of weights (pipe.clone())")
    parser.add_argument("--cpus-per-replica", type=float, default=1.0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="CPU")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Start a local Ray (127.0.0.1 unless `--host`), serve the app with `--replicas`, block until Ctrl-C."""
    import ray

    args = parse_args(argv)
    if not (args.model_dir / "model_index.json").is_file():
        print(f"error: `{args.model_dir}` is not a converted SD3 folder (no model_index.json).", file=sys.stderr)
        return 2
    project = str(Path(__file__).resolve().parents[1])  # the replicas import `sd3_helper` from here
    ray.init(include_dashboard=False, _node_ip_address=args.host, runtime_env={"env_vars": {"PYTHONPATH": project}})
    serve.start(http_options={"host": args.host, "port": args.port})
    app = build_app({
        "model_dir": str(args.model_dir.resolve()), "device": args.device, "clones": args.clones,
        "replicas": args.replicas, "cpus_per_replica": args.cpus_per_replica,
    })  # fmt: skip
    serve.run(app, route_prefix="/")
    print(f"serving {args.model_dir} on http://{args.host}:{args.port}/v1 with {args.replicas} replica(s); Ctrl-C stops")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
