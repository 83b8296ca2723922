"""Ask an OpenAI-style images endpoint (OpenVINO Model Server serving an SD3 folder) for an image.

    python serving/client.py --url http://localhost:8000/v3 --model sd3 --prompt "a photo of a cat" --output cat.png
"""

import argparse
import base64
import json
import urllib.request
from pathlib import Path


def generate_image(*, url: str, model: str, prompt: str, size: str = "512x512", steps: int = 28, seed: int | None = None, timeout: float = 600.0) -> bytes:
    """POST `{url}/images/generations` and return the first image's PNG bytes."""
    request_body = {"model": model, "prompt": prompt, "size": size, "n": 1, "num_inference_steps": steps, "response_format": "b64_json"}
    if seed is not None:
        request_body["rng_seed"] = seed
    request = urllib.request.Request(
        f"{url.rstrip('/')}/images/generations",
        data=json.dumps(request_body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        payload = json.loads(response.read())
    return base64.b64decode(payload["data"][0]["b64_json"])


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
