"""The Ray Serve app (`serving/ray_app.py`) for real: a local Ray on 127.0.0.1 with 2 replicas of the tiny model,
concurrent requests through `serving/client.py`, a replica killed mid-run, bad requests, and Ray shut down at the end."""

import base64
import io
import json
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sd3_helper
from conftest import F32

SERVING = Path(__file__).resolve().parents[1] / "serving"
sys.path.insert(0, str(SERVING))
SIZE, STEPS = "48x32", 2

pytestmark = pytest.mark.slow  # starts a Ray cluster


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def ray_app(converted):
    """(base URL, model folder): the app with 2 replicas (half a CPU each) on a local Ray, shut down even on failure."""
    import ray
    from ray import serve

    sys.path.insert(0, str(SERVING.parent))
    from serving.ray_app import build_app

    model_dir = converted("fp32", False)
    port = free_port()
    started = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(SERVING.parent)}})  # fmt: skip
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_app({"model_dir": str(model_dir), "replicas": 2, "cpus_per_replica": 0.5, "ov_config": F32})
        serve.run(app, route_prefix="/")
        print(f"Ray and 2 replicas ready in {time.perf_counter() - started:.1f} s")
        yield f"http://127.0.0.1:{port}", model_dir
    finally:
        serve.shutdown()
        ray.shutdown()


def replica_pids(url: str, *, tries: int = 40) -> set[int]:
    """The pids `/health` answers from (requests spread over the replicas)."""
    return {get_json(f"{url}/health")["pid"] for _ in range(tries)}


def expected_images(model_dir: Path, seeds: list[int]) -> list[np.ndarray]:
    """Our pipeline's images in this process for the same request (its defaults: guidance 7, the step cache on)."""
    pipe = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(model_dir, ov_config=F32)
    width, height = map(int, SIZE.split("x"))
    return [np.asarray(pipe("a photo of a cat", height=height, width=width, num_inference_steps=STEPS, generator=seed).images[0]) for seed in seeds]


def test_concurrent_requests_through_the_client_match_the_pipeline(ray_app):
    from client import generate_image

    url, model_dir = ray_app
    assert len(replica_pids(url)) == 2, "two replicas answer"
    seeds = list(range(8))
    with ThreadPoolExecutor(8) as pool:
        pngs = list(pool.map(lambda seed: generate_image(url=f"{url}/v1", model="sd3", prompt="a photo of a cat", size=SIZE, steps=STEPS, seed=seed), seeds))
    for png, expected in zip(pngs, expected_images(model_dir, seeds)):
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), expected)
    assert len({png for png in pngs}) == len(seeds), "each seed its own image"


def test_a_killed_replica_loses_no_request_and_comes_back(ray_app):
    from client import generate_image

    url, _ = ray_app
    before = replica_pids(url)
    victim = min(before)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(generate_image, url=f"{url}/v1", model="sd3", prompt="a dog", size=SIZE, steps=STEPS, seed=seed, retries=3) for seed in range(8)]
        time.sleep(1.0)
        os.kill(victim, signal.SIGKILL)
        pngs = [future.result(timeout=300) for future in futures]
    assert all(Image.open(io.BytesIO(png)).size == (48, 32) for png in pngs)
    deadline = time.time() + 120
    while time.time() < deadline:
        now = replica_pids(url, tries=20)
        if len(now) == 2 and victim not in now:
            break
        time.sleep(2)
    assert len(now) == 2 and victim not in now, f"Ray restarts the replica: pids {before} -> {now}"


BAD = {
    "size": ({"prompt": "a cat", "size": "50x32"}, "`height` and `width` have to be divisible by"),
    "nan-guidance": ({"prompt": "a cat", "size": SIZE, "guidance_scale": float("nan")}, "`guidance_scale` has to be a finite number"),
    "unknown-field": ({"prompt": "a cat", "sampler": "euler"}, "`sampler`: Extra inputs are not permitted"),
    "too-many": ({"prompt": "a cat", "n": 9}, "`n`: Input should be less than or equal to 4"),
    "no-prompt": ({"size": SIZE}, "`prompt`: Field required"),
}


@pytest.mark.parametrize("body, message", BAD.values(), ids=BAD.keys())
def test_bad_requests_get_400_with_the_named_error(ray_app, body, message):
    url, _ = ray_app
    status, payload = post(f"{url}/v1/images/generations", body)
    assert status == 400 and message in payload["detail"], payload


def test_edits_route_repaints_with_a_mask(ray_app):
    url, _ = ray_app
    picture, mask = Image.new("RGB", (48, 32), (200, 120, 40)), Image.new("L", (48, 32), 0)
    mask.paste(255, (12, 8, 36, 24))

    def encoded(image) -> str:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    body = {"prompt": "a red ball", "size": SIZE, "num_inference_steps": 2, "seed": 1, "image": encoded(picture), "mask": encoded(mask), "strength": 0.9}
    status, payload = post(f"{url}/v1/images/edits", body)
    assert status == 200, payload
    result = np.asarray(Image.open(io.BytesIO(base64.b64decode(payload["data"][0]["b64_json"]))))
    assert result.shape == (32, 48, 3)
    status, payload = post(f"{url}/v1/images/edits", {"prompt": "x", "image": "not base64!"})
    assert status == 400 and "`image` has to be a base64-encoded PNG or JPEG" in payload["detail"]


def test_a_replica_serves_loras_by_name_from_its_pool_of_clones(converted, tiny_checkpoint, tmp_path):
    from fastapi import HTTPException

    from serving.ray_app import ImagesRequest, PipelinePool

    model_dir, lora = converted("fp32", False), sd3_helper.make_tiny_lora(tiny_checkpoint, tmp_path / "lora")
    replica = PipelinePool(str(model_dir), "CPU", 2, {"style": str(lora)}, F32)  # what a replica holds, without Ray
    assert len(replica.pool) == 2 and replica.pool[0]["text"].transformer.shared is replica.pool[1]["text"].transformer.shared
    request = dict(prompt="a cat", size=SIZE, num_inference_steps=STEPS, seed=1, step_cache=False)
    served = replica.generate(ImagesRequest(**request, adapter="style"), task="text")["data"][0]["b64_json"]
    pipe = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(model_dir, ov_config=F32)
    pipe.load_lora_weights(lora, adapter_name="style")
    expected = pipe("a cat", height=32, width=48, num_inference_steps=STEPS, generator=1, taylorseer=None).images[0]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(served)))), np.asarray(expected))
    with pytest.raises(HTTPException) as refused:
        replica.generate(ImagesRequest(**request, adapter="nope"), task="text")
    assert refused.value.status_code == 400 and "nope" in refused.value.detail
