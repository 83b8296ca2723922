"""Image-to-image on the SD3-Medium-shaped model: our pipeline against our text-to-image and openvino.genai's
`Image2ImagePipeline`, head to head in one process.

    python benchmarks/bench_image_to_image.py              # 2 layers, 512x512, 28 steps, strength 0.6, 3 rounds
    python benchmarks/bench_image_to_image.py --quick      # tiny shapes: a smoke run of every code path

The checkpoint and its fp16 conversion are those of `bench_sd3.py` (built once under `--work-dir`). One process
loads the three runtimes on the same folder, warms each up, then runs rounds in a rotating order: text-to-image
(`--steps` steps), image-to-image at `--strength` (int(steps x strength) steps plus one VAE encode) from the
text-to-image image, and genai's image-to-image with the same arguments and seed. The table gives the median
time per image and, for each pair, the median of the per-round ratios with its range (a pair sees the same
machine speed, which drifts on a shared VM). Expected: image-to-image ~ strength x text-to-image + one encode.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's modules
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark's modules

from bench_checkpoint import build_checkpoint  # noqa: E402
from bench_report import machine_description, write_results  # noqa: E402

PROMPT = "a photo of a cat sitting on a wooden table, highly detailed"
SEED = 42


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("build/bench"))
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks (24: SD3 Medium's depth)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--strength", type=float, default=0.6)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--max-sequence-length", type=int, default=256,
        help="ours' T5 positions; without T5 genai pads T5 to CLIP's 77, so 77 gives both the same work",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 64 px, 4 steps, 1 round")
    parser.add_argument("--output", type=Path, default=None, help="default: benchmarks/results/bench_image_to_image_<N>-layers.{json,md}")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.steps, args.rounds = 64, 4, 1
    return args


def load_runtimes(folder: Path, *, args: argparse.Namespace) -> dict:
    """name -> function(image) that makes one image with the run's settings, each warmed up once."""
    import numpy as np
    import openvino as ov
    import openvino_genai
    import torch

    from sd3_helper import OVStableDiffusion3Img2ImgPipeline, OVStableDiffusion3Pipeline, make_genai_pipeline

    text_pipe = OVStableDiffusion3Pipeline.from_pretrained(folder)
    text_pipe.set_progress_bar_config(disable=True)
    image_pipe = OVStableDiffusion3Img2ImgPipeline.from_pipe(text_pipe)
    genai_pipe = make_genai_pipeline(folder, task="image-to-image")
    common = dict(height=args.size, width=args.size, num_inference_steps=args.steps, guidance_scale=args.guidance)
    ours = dict(common, max_sequence_length=args.max_sequence_length)

    def ours_text(image):
        return text_pipe(PROMPT, generator=torch.Generator().manual_seed(SEED), **ours).images[0]

    def ours_image(image):
        return image_pipe(PROMPT, image=image, strength=args.strength, generator=torch.Generator().manual_seed(SEED), **ours).images[0]

    def genai_image(image):
        pixels = ov.Tensor(np.asarray(image, dtype=np.uint8)[None])
        return genai_pipe.generate(PROMPT, pixels, strength=args.strength, generator=openvino_genai.TorchGenerator(SEED), **common)

    runtimes = {"ours text-to-image": ours_text, "ours image-to-image": ours_image, "genai image-to-image": genai_image}
    input_image = ours_text(None)  # also the warm-up of text-to-image
    for name in ("ours image-to-image", "genai image-to-image"):
        runtimes[name](input_image)
    return runtimes, input_image, image_pipe


def time_encode(image_pipe, image, *, size: int) -> float:
    """Seconds of one VAE encode (the part image-to-image adds to its steps)."""
    import torch

    pixels = image_pipe.preprocess_image(image, height=size, width=size)
    start = time.perf_counter()
    image_pipe.encode_image(pixels, generator=torch.Generator().manual_seed(SEED))
    return time.perf_counter() - start


def time_decode(image_pipe, *, size: int) -> float:
    """Seconds of one VAE decode (the part both pipelines share, whatever the strength)."""
    import torch

    channels = image_pipe.vae_decoder.config["latent_channels"]
    latents = torch.zeros(1, channels, size // image_pipe.vae_scale_factor, size // image_pipe.vae_scale_factor)
    start = time.perf_counter()
    image_pipe.decode_latents(latents, output_type="pil")
    return time.perf_counter() - start


def run_rounds(runtimes: dict, image, *, rounds: int) -> dict[str, list[float]]:
    names = list(runtimes)
    times = {name: [] for name in names}
    for round_index in range(rounds):
        for name in names[round_index % len(names) :] + names[: round_index % len(names)]:  # rotating order
            start = time.perf_counter()
            runtimes[name](image)
            times[name].append(time.perf_counter() - start)
            print(f"round {round_index + 1}: {name} {times[name][-1]:.2f} s", flush=True)
    return times


def ratio(times: dict, numerator: str, denominator: str) -> dict:
    ratios = [a / b for a, b in zip(times[numerator], times[denominator])]
    return {"pair": f"{numerator} / {denominator}", "median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def markdown(results: dict) -> str:
    setup = results["setup"]
    lines = [
        f"# Image-to-image, {setup['layers']}-layer SD3-Medium-shaped model, {setup['size']}x{setup['size']}, "
        f"{setup['steps']} steps, strength {setup['strength']}, guidance {setup['guidance']}, fp16 IR, {setup['rounds']} rounds, "
        f"ours with max_sequence_length {setup['max_sequence_length']} (genai without T5: 77)",
        "",
        f"Machine: {results['machine'].get('cpu', '?')}, features {', '.join(results['machine'].get('cpu_features', [])) or 'none of AVX-512 / AMX'}",
        "",
        "| runtime | median time per image (s) |",
        "|---|---:|",
        *(f"| {name} | {statistics.median(values):.2f} |" for name, values in results["times"].items()),
        f"| VAE encode alone | {results['encode_s']:.2f} |",
        f"| VAE decode alone | {results['decode_s']:.2f} |",
        "",
        "| pair | median ratio | range |",
        "|---|---:|---:|",
        *(f"| {r['pair']} | {r['median']:.3f} | {r['min']:.3f}-{r['max']:.3f} |" for r in results["ratios"]),
        "",
        f"Expected image-to-image / text-to-image: {results['expected_ratio']:.3f} "
        f"({results['image_steps']} of {setup['steps']} steps, the same decode, plus the encode).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    checkpoint = build_checkpoint(args.work_dir, layers=args.layers, quick=args.quick)
    from sd3_helper import convert_sd3

    folder = convert_sd3(checkpoint, args.work_dir / f"{checkpoint.name}-fp16", weight_format="fp16", load_t5=False)
    runtimes, image, image_pipe = load_runtimes(folder, args=args)
    times = run_rounds(runtimes, image, rounds=args.rounds)
    encode_s = statistics.median(time_encode(image_pipe, image, size=args.size) for _ in range(3))
    decode_s = statistics.median(time_decode(image_pipe, size=args.size) for _ in range(3))
    image_steps = args.steps - int(max(args.steps - args.steps * args.strength, 0))
    text_median = statistics.median(times["ours text-to-image"])
    results = {
        "setup": dict(
            layers=args.layers, size=args.size, steps=args.steps, strength=args.strength, guidance=args.guidance,
            rounds=args.rounds, quick=args.quick, max_sequence_length=args.max_sequence_length,
        ),  # fmt: skip
        "machine": machine_description(),
        "times": times,
        "encode_s": encode_s,
        "decode_s": decode_s,
        "image_steps": image_steps,
        # the steps scale with the strength; the decode (and the prompt encoding) do not; the encode is added
        "expected_ratio": (image_steps / args.steps * (text_median - decode_s) + decode_s + encode_s) / text_median,
        "ratios": [ratio(times, "ours image-to-image", "ours text-to-image"), ratio(times, "ours image-to-image", "genai image-to-image")],
    }
    stem = f"bench_image_to_image_{'quick' if args.quick else f'{args.layers}-layers'}"
    stem += "" if args.max_sequence_length == 256 else f"-{args.max_sequence_length}-tokens"
    write_results(results, stem=stem, output=args.output, markdown=markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
