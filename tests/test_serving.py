"""Serving files: the OVMS config parses as documented, and the client speaks the OpenAI images API.

OpenVINO Model Server itself is not installable here (it ships as a Docker image or a binary archive), so
a loopback stand-in server answers the client with an image from our pipeline; the README says which
parts ran here and which are documented only.
"""

import base64
import io
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch
from PIL import Image

SERVING = Path(__file__).resolve().parents[1] / "serving"
IMAGE_GEN_OPTIONS = {  # ImageGenCalculatorOptions documented by OpenVINO Model Server
    "models_path", "device", "plugin_config", "max_resolution", "default_resolution", "max_num_images_per_prompt",
    "default_num_inference_steps", "max_num_inference_steps", "resolution", "num_images_per_prompt", "guidance_scale",
}


def test_ovms_config_and_graph_are_consistent():
    config = json.loads((SERVING / "ovms" / "config.json").read_text())
    (servable,) = config["mediapipe_config_list"]
    assert servable["name"] == "sd3" and servable["base_path"].endswith("sd3-ov")
    graph = (SERVING / "ovms" / "graph.pbtxt").read_text()
    assert 'input_side_packet: "IMAGE_GEN_NODE_RESOURCES:pipes"' in graph  # OVMS requires exactly this
    options = dict(re.findall(r"^\s+(\w+): \"?([^\"\n]+)\"?$", graph.split("ImageGenCalculatorOptions]: {")[1], re.M))
    assert set(options) <= IMAGE_GEN_OPTIONS, set(options) - IMAGE_GEN_OPTIONS
    assert options["models_path"] == "./" and options["device"] == "CPU"
    for resolution in (options["default_resolution"], options["max_resolution"]):
        width, height = map(int, resolution.split("x"))
        assert width % 16 == 0 and height % 16 == 0  # SD3: vae_scale_factor 8 x patch_size 2


class _ImagesAPI(BaseHTTPRequestHandler):
    pipeline = None
    requests: list = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append((self.path, body))
        width, height = map(int, body["size"].split("x"))
        image = self.pipeline(
            body["prompt"], height=height, width=width, num_inference_steps=body["num_inference_steps"],
            generator=torch.Generator().manual_seed(body.get("rng_seed", 0)),
        ).images[0]
        png = io.BytesIO()
        image.save(png, format="PNG")
        payload = json.dumps({"created": 0, "data": [{"b64_json": base64.b64encode(png.getvalue()).decode()}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_client_against_a_loopback_images_endpoint(ov_pipeline):
    import sys

    sys.path.insert(0, str(SERVING))
    from client import generate_image

    _ImagesAPI.pipeline = ov_pipeline("fp32")
    server = HTTPServer(("127.0.0.1", 0), _ImagesAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v3"
        png = generate_image(url=url, model="sd3", prompt="a cat", size="48x32", steps=2, seed=5, timeout=120)
    finally:
        server.shutdown()
    path, body = _ImagesAPI.requests[-1]
    assert path == "/v3/images/generations"
    assert body == {"model": "sd3", "prompt": "a cat", "size": "48x32", "n": 1, "num_inference_steps": 2, "response_format": "b64_json", "rng_seed": 5}
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size == (48, 32)


def test_the_ray_serve_config_is_valid_and_points_at_the_app_builder():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "serving" / "ray_serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config)
    application = schema.applications[0]
    assert application.import_path == "serving.ray_app:build_app" and application.args["model_dir"]
    assert application.deployments[0].name == "SD3Images"  # the class the builder binds


def test_the_ray_app_maps_requests_to_pipeline_arguments():
    import sys as _sys

    _sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from serving.ray_app import ImagesRequest, call_arguments, parse_size

    arguments = call_arguments(ImagesRequest(prompt="a cat", size="768x512", rng_seed=5, n=2, step_cache=False, num_inference_steps=9))
    assert arguments["width"] == 768 and arguments["height"] == 512 and arguments["generator"] == 5
    assert arguments["num_images_per_prompt"] == 2 and arguments["taylorseer"] is None and arguments["num_inference_steps"] == 9
    assert "guidance_scale" not in arguments, "left out: the pipeline's default"
    assert call_arguments(ImagesRequest(prompt="x", seed=3))["generator"] == 3 and parse_size(None) == {}
    for bad, message in (("512", "`size` has to be 'WIDTHxHEIGHT'"), ("axb", "`size` has to be 'WIDTHxHEIGHT'")):
        with pytest.raises(ValueError, match=message):
            parse_size(bad)
    with pytest.raises(ValueError, match="`response_format` has to be 'b64_json' but is 'url'"):
        call_arguments(ImagesRequest(prompt="x", response_format="url"))
