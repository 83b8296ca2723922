"""The VAE in int8 (`quantize_sd3(..., quantize_vae=True)`) on the SD3-Medium-shaped model: which layers stay in
16 bits, the image quality, and the speed, head to head in one process.

    python benchmarks/bench_vae.py --variants     # the variant search: 256x256, 4 calibration + 4 held-out latents
    python benchmarks/bench_vae.py                # the chosen variant at 512x512: quality gate, decode and whole image
    python benchmarks/bench_vae.py --quick        # tiny shapes: a smoke run of every code path

The checkpoint and its fp16 conversion are those of `bench_sd3.py` (built once under `--work-dir`). Quality is the
PSNR of the int8 decoder's image against the fp16 decoder's on the same latents, both run in f32
(`INFERENCE_PRECISION_HINT=f32`), so that it measures the quantization alone; the latents are held out: the final
latents of whole generations on the shipped calibration prompts with seed 1, where calibration uses seed 0. The
encoder's quality is the PSNR of the image decoded (fp16 decoder) from the int8 encoder's latent means against
the one decoded from the fp16 encoder's, on held-out pixels (decoded images and synthetic ones).

`--variants` quantizes the decoder once per entry of `VARIANTS` and reports its PSNR and decode time (at the
CPU's default precision). The default run writes an int8-hybrid folder with `quantize_vae=True` (the transformer
calibrated on `--calibration-samples` calls, as `bench_sd3.py` does), then alternates in one process: the fp16
and int8 decoders on the same latents, and whole images of ours (int8-hybrid, step cache, int8 VAE) against
openvino.genai's default (its step cache) on the fp16 folder; each pair's median ratio is reported.
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
from bench_runtimes import make_runtime  # noqa: E402

F32 = {"INFERENCE_PRECISION_HINT": "f32"}
CALIBRATION_SEED, HELD_OUT_SEED = 0, 1


def variants() -> dict:
    """name -> VaeQuantization: the choices tried, from everything in int8 to more layers kept in 16 bits."""
    from sd3_openvino.export.vae_quantization import VAE_IGNORED_LAYERS, VaeQuantization

    ends = ("first_convolution", "last_convolution")
    base = (*ends, "attention", "normalization", "residual_add")  # NNCF's transformer rules keep these last two out too
    return {
        "all int8, symmetric activations": VaeQuantization(ignored_layers=(), preset="performance"),
        "all int8": VaeQuantization(ignored_layers=()),
        "keep first + last convolution": VaeQuantization(ignored_layers=ends),
        "keep first + last + attention": VaeQuantization(ignored_layers=(*ends, "attention")),
        "keep first + last + attention, no bias correction": VaeQuantization(ignored_layers=(*ends, "attention"), bias_correction=False),
        "keep first + last + attention, NNCF transformer rules": VaeQuantization(ignored_layers=(*ends, "attention"), transformer_rules=True),
        "B = keep first + last + attention + GroupNorm and residual-Add inputs": VaeQuantization(ignored_layers=base),
        "B + shortcut convolutions": VaeQuantization(ignored_layers=(*base, "shortcut")),
        "B + lowest-resolution convolutions": VaeQuantization(ignored_layers=(*base, "lowest_resolution")),
        "B + full-resolution convolutions": VaeQuantization(ignored_layers=(*base, "full_resolution")),
        "B + lowest- and full-resolution convolutions (chosen)": VaeQuantization(ignored_layers=VAE_IGNORED_LAYERS),
        "B + every residual convolution": VaeQuantization(ignored_layers=(*base, "lowest_resolution", "residual", "full_resolution")),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("build/bench"))
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks (24: SD3 Medium's depth)")
    parser.add_argument("--variants", action="store_true", help="the variant search instead of the final run")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default 512, 256 with --variants)")
    parser.add_argument("--samples", type=int, default=None, help="calibration and held-out latents each (default 8, 4 with --variants)")
    parser.add_argument("--calibration-samples", type=int, default=28, help="transformer calls calibrating int8-hybrid")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 64 px, 2 samples, 1 round")
    parser.add_argument("--output", type=Path, default=None, help="default: benchmarks/results/bench_vae_<N>-layers[-variants].{json,md}")
    args = parser.parse_args(argv)
    args.size = args.size or (256 if args.variants else 512)
    args.samples = args.samples or (4 if args.variants else 8)
    if args.quick:
        args.size, args.samples, args.rounds, args.calibration_samples = 64, 2, 1, 4
    return args


# ----------------------------------------------------------------------------------------------------------
# Quality
# ----------------------------------------------------------------------------------------------------------


def vae_samples(folder: Path, *, size: int, samples: int, seed: int) -> dict:
    """`collect_vae_calibration_data` of the fp16 folder: decoder latents and encoder pixels."""
    from sd3_helper import OVStableDiffusion3Pipeline
    from sd3_openvino.export.calibration import collect_vae_calibration_data, load_calibration_prompts

    pipe = OVStableDiffusion3Pipeline.from_pretrained(folder)
    return collect_vae_calibration_data(pipe, prompts=load_calibration_prompts(), num_samples=samples, seed=seed, height=size, width=size)


def decoded(compiled, latents: list[dict]) -> list:
    """Images in [0, 1] (as the pipeline post-processes them) of each decoder input."""
    import numpy as np

    return [np.clip(compiled(inputs)[0] / 2 + 0.5, 0.0, 1.0) for inputs in latents]


def decoder_psnr(reference, quantized, latents: list[dict]) -> list[float]:
    from sd3_helper import psnr

    return [psnr(image, expected) for image, expected in zip(decoded(quantized, latents), decoded(reference, latents))]


def encoder_psnr(reference, quantized, decoder, pixels: list[dict]) -> list[float]:
    """PSNR of the images decoded from the int8 encoder's latent means against those from the fp16 encoder's."""
    from sd3_helper import psnr

    channels = decoder.inputs[0].get_partial_shape()[1].get_length()

    def means(encoder) -> list[dict]:
        return [{"latent_sample": encoder(inputs)[0][:, :channels]} for inputs in pixels]

    return [psnr(image, expected) for image, expected in zip(decoded(decoder, means(quantized)), decoded(decoder, means(reference)))]


def time_decode(compiled, latents: dict, *, repeats: int = 1) -> float:
    compiled(latents)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        compiled(latents)
    return (time.perf_counter() - start) / repeats


def search_variants(folder: Path, *, args: argparse.Namespace) -> list[dict]:
    """Quantize the decoder with each of `variants()`; its PSNR on held-out latents and its decode time."""
    import openvino as ov

    from sd3_openvino.export.vae_quantization import quantize_vae_model

    core = ov.Core()
    calibration = vae_samples(folder, size=args.size, samples=args.samples, seed=CALIBRATION_SEED)["vae_decoder"]
    held_out = vae_samples(folder, size=args.size, samples=args.samples, seed=HELD_OUT_SEED)["vae_decoder"]
    fp16 = core.read_model(folder / "vae_decoder" / "openvino_model.xml")
    reference = core.compile_model(fp16, "CPU", F32)
    rows = [{"variant": "fp16 (reference)", "psnr_db": None, "decode_s": time_decode(core.compile_model(fp16, "CPU"), held_out[0])}]
    print(f"fp16: decode {rows[0]['decode_s']:.2f} s", flush=True)
    for name, settings in variants().items():
        start = time.perf_counter()
        quantized = quantize_vae_model(core.read_model(folder / "vae_decoder" / "openvino_model.xml"), calibration, settings=settings)
        quantize_s = time.perf_counter() - start
        values = decoder_psnr(reference, core.compile_model(quantized, "CPU", F32), held_out)
        decode_s = time_decode(core.compile_model(quantized, "CPU"), held_out[0])
        rows.append({"variant": name, "psnr_db": statistics.mean(values), "psnr_min_db": min(values), "decode_s": decode_s, "quantize_s": quantize_s})
        print(f"{name}: PSNR {rows[-1]['psnr_db']:.2f} dB (min {min(values):.2f}), decode {decode_s:.2f} s, quantized in {quantize_s:.0f} s", flush=True)
    return rows


# ----------------------------------------------------------------------------------------------------------
# The chosen variant: quality gate and speed, head to head
# ----------------------------------------------------------------------------------------------------------


def quantized_folder(folder: Path, *, args: argparse.Namespace) -> Path:
    from sd3_helper import quantize_sd3

    output = folder.with_name(f"{folder.name.removesuffix('-fp16')}-int8-hybrid-int8-vae")
    return quantize_sd3(folder, output, num_samples=args.calibration_samples, quantize_vae=True, vae_num_samples=args.samples)


def quality(folder: Path, hybrid: Path, held_out: dict) -> dict:
    """PSNR of the int8 decoder and encoder of `hybrid` against the fp16 ones of `folder`, on held-out inputs."""
    import openvino as ov

    core = ov.Core()
    folders = {"fp16": folder, "int8": hybrid}
    compiled = {
        (name, which): core.compile_model(path / name / "openvino_model.xml", "CPU", F32) for name in ("vae_decoder", "vae_encoder") for which, path in folders.items()
    }
    bf16 = core.compile_model(folder / "vae_decoder" / "openvino_model.xml", "CPU")
    return {
        "decoder_psnr_db": decoder_psnr(compiled["vae_decoder", "fp16"], compiled["vae_decoder", "int8"], held_out["vae_decoder"]),
        "decoder_bf16_psnr_db": decoder_psnr(compiled["vae_decoder", "fp16"], bf16, held_out["vae_decoder"]),  # the CPU's default precision
        # every other input: as many decoded images as synthetic ones, half the f32 encodes and decodes
        "encoder_psnr_db": encoder_psnr(
            compiled["vae_encoder", "fp16"], compiled["vae_encoder", "int8"], compiled["vae_decoder", "fp16"], held_out["vae_encoder"][::2]
        ),
    }


def alternate(measures: dict, *, rounds: int) -> dict[str, list[float]]:
    """name -> seconds of each round; the two measures alternate, in a rotating order."""
    names, times = list(measures), {name: [] for name in measures}
    for round_index in range(rounds):
        for name in names[round_index % 2 :] + names[: round_index % 2]:
            times[name].append(measures[name]())
            print(f"round {round_index + 1}: {name} {times[name][-1]:.2f} s", flush=True)
    return times


def speed(folder: Path, hybrid: Path, latents: dict, *, args: argparse.Namespace) -> dict:
    """Decode fp16 vs int8, then whole images of ours (int8-hybrid, step cache, int8 VAE) vs genai on fp16."""
    import openvino as ov

    core = ov.Core()
    folders = {"fp16": folder, "int8": hybrid}
    decoders = {f"decode {which}": core.compile_model(path / "vae_decoder" / "openvino_model.xml", "CPU") for which, path in folders.items()}
    decode = alternate({name: lambda compiled=compiled: time_decode(compiled, latents) for name, compiled in decoders.items()}, rounds=args.rounds)
    del decoders
    common = dict(height=args.size, width=args.size, steps=4 if args.quick else 28, max_sequence_length=256)
    ours = make_runtime({"family": "ours", "folder": str(hybrid), "taylorseer": True, **common})
    genai = make_runtime({"family": "genai", "folder": str(folder), **common})
    for runtime in (ours, genai):
        runtime.load(None)
        runtime.compile() if runtime.compile else None
        runtime.call(steps=2)  # warm-up
    images = {"ours int8-hybrid + step cache + int8 VAE": ours.whole_image, "genai fp16 (default: step cache)": genai.whole_image}
    whole = alternate(images, rounds=args.rounds)
    return {"decode": decode, "whole": whole}


def ratio(times: dict) -> dict:
    first, second = times.values()
    ratios = [a / b for a, b in zip(first, second)]
    return {"pair": " / ".join(times), "median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


# ----------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    setup, machine = results["setup"], results["machine"]
    lines = [
        f"# int8 VAE, {setup['layers']}-layer SD3-Medium-shaped model (random weights), {setup['size']}x{setup['size']}, "
        f"{setup['samples']} calibration + {setup['samples']} held-out latents",
        "",
        f"Machine: {machine.get('cpu', '?')}, {machine.get('cores')} cores, "
        f"features {', '.join(machine.get('cpu_features', [])) or 'none'}; {machine.get('date')}",
        "",
    ]
    if "variants" in results:
        lines += ["| variant (decoder) | PSNR vs fp16, f32 (dB): mean / min | decode (s), default precision |", "|---|---:|---:|"]
        for row in results["variants"]:
            quality_cell = "-" if row["psnr_db"] is None else f"{row['psnr_db']:.2f} / {row['psnr_min_db']:.2f}"
            lines.append(f"| {row['variant']} | {quality_cell} | {row['decode_s']:.2f} |")
        return "\n".join(lines) + "\n"
    quality_values = results["quality"]
    lines += [
        "| quality (held-out inputs, f32 unless noted) | mean (dB) | min (dB) |",
        "|---|---:|---:|",
        *(
            f"| {label} | {statistics.mean(quality_values[key]):.2f} | {min(quality_values[key]):.2f} |"
            for key, label in (
                ("decoder_psnr_db", "int8 decoder vs fp16 decoder"),
                ("decoder_bf16_psnr_db", "fp16 decoder at the CPU's default (bf16) vs f32"),
                ("encoder_psnr_db", "int8 encoder vs fp16 encoder (decoded by the fp16 decoder)"),
            )
        ),
        "",
        "| runtime | median time (s) |",
        "|---|---:|",
        *(f"| {name} | {statistics.median(values):.2f} |" for part in ("decode", "whole") for name, values in results["speed"][part].items()),
        "",
        "| pair, head to head | median ratio | range |",
        "|---|---:|---:|",
        *(f"| {r['pair']} | {r['median']:.3f} | {r['min']:.3f}-{r['max']:.3f} |" for r in results["ratios"]),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    checkpoint = build_checkpoint(args.work_dir, layers=args.layers, quick=args.quick)
    from sd3_helper import convert_sd3

    folder = convert_sd3(checkpoint, args.work_dir / f"{checkpoint.name}-fp16", weight_format="fp16", load_t5=False)
    setup = dict(layers=args.layers, size=args.size, samples=args.samples, rounds=args.rounds, quick=args.quick, calibration_samples=args.calibration_samples)
    results = {"setup": setup, "machine": machine_description()}
    if args.variants:
        results["variants"] = search_variants(folder, args=args)
    else:
        hybrid = quantized_folder(folder, args=args)
        held_out = vae_samples(folder, size=args.size, samples=args.samples, seed=HELD_OUT_SEED)
        results["quality"] = quality(folder, hybrid, held_out)
        results["speed"] = speed(folder, hybrid, held_out["vae_decoder"][0], args=args)
        results["ratios"] = [ratio(results["speed"]["decode"]), ratio(results["speed"]["whole"])]
    stem = f"bench_vae_{'quick' if args.quick else f'{args.layers}-layers'}{'-variants' if args.variants else ''}"
    write_results(results, stem=stem, output=args.output, markdown=markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
