"""Ask an OpenAI-style images endpoint (OpenVINO Model Server, or this project's Ray Serve app) for an image.

    python serving/client.py --url http://localhost:8000/v3 --model sd3 --prompt "a photo of a cat" --output cat.png   # OVMS
    python serving/client.py --url http://127.0.0.1:8000/v1 --prompt "a photo of a cat" --output cat.png               # serving/ray_app.py
"""

import argparse
import base64
import json
import urllib.error
import urllib.request
from pathlib import Path


def generate_image(
    *, url: str, model: str, prompt: str, size: str = "512x512", steps: int = 28, seed: int | None = None, timeout: float = 600.0, retries: int = 2
) -> bytes:
    """POST `{url}/images/generations` and return the first image's PNG bytes. A server error (5xx) or a dropped
    connection, as when a replica dies mid-request, is retried up to `retries` times; a 4xx is raised at once."""
    request_body = {"model": model, "prompt": prompt, "size": size, "n": 1, "num_inference_steps": steps, "response_format": "b64_json"}
    if seed is not None:
        request_body["rng_seed"] = seed
    request = urllib.request.Request(
        f"{url.rstrip('/')}/images/generations",
        data=json.dumps(request_body).encode(),
        headers={"Content-Type": "application/json"},
    )
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload = json.loads(response.read())
            return base64.b64decode(payload["data"][0]["b64_json"])
        except urllib.error.HTTPError as error:
            if error.code < 500 or attempt == retries:
                raise
        except (urllib.error.URLError, ConnectionError):
            if attempt == retries:
                raise
    raise AssertionError("unreachable")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://localhost:8000/v3")
    parser.add_argument("--model", default="sd3")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--size", default="512x512")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--output", type=Path, default=Path("image.png"))
    args = parser.parse_args()
    args.output.write_bytes(generate_image(url=args.url, model=args.model, prompt=args.prompt, size=args.size, steps=args.steps, seed=args.seed))
    print(args.output)


if __name__ == "__main__":
    main()
