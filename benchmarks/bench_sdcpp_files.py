"""The files `bench_sdcpp.py` compares on: one SD3-Medium-shaped single file and our folders converted from it.

    python benchmarks/bench_sdcpp_files.py                 # build/bench/sd3-medium-shaped-24-layers.safetensors + -sf-{fp16,int8}

1. `bench_checkpoint.py`'s random-weight SD3 Medium checkpoint at full depth (24 layers, 1536 wide, full-size CLIP-L
   and CLIP-G, the real VAE's shapes, no T5: stable-diffusion.cpp infers SD3's shapes from a fixed SD3-Medium template
   and rejects smaller files), in diffusers format;
2. written as one Stability-layout single file (transformer, VAE, CLIP-L/G; fp16, 4.3 GB) by the tests' inverse
   mapping (`tests/single_file_layout.py`);
3. converted by `convert_sd3(single_file, out, config=<the diffusers folder>, load_t5=False)` to fp16 and int8, as a
   user converts a single file. Each step is skipped when its output exists.
"""

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
sys.path.insert(0, str(REPO_ROOT / "tests"))

FOLDER_STEM = "sd3-medium-shaped-24-layers"
WEIGHT_FORMATS = ("fp16", "int8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("build/bench"))
    parser.add_argument("--formats", nargs="+", default=list(WEIGHT_FORMATS), choices=("fp16", "int8", "int4", "int8-hybrid"))
    args = parser.parse_args(argv)

    import torch
    from bench_checkpoint import build_checkpoint
    from diffusers import StableDiffusion3Pipeline
    from single_file_layout import save_single_file, single_file_state_dict

    from sd3_helper import convert_sd3

    checkpoint = build_checkpoint(args.work_dir, layers=24)
    single_file = args.work_dir / f"{FOLDER_STEM}.safetensors"
    if not single_file.is_file():
        pipeline = StableDiffusion3Pipeline.from_pretrained(str(checkpoint), torch_dtype=torch.float16, text_encoder_3=None, tokenizer_3=None)
        staging = single_file.with_name(f".{single_file.name}.partial")
        save_single_file(single_file_state_dict(pipeline, t5=False), staging)
        staging.rename(single_file)  # a file that is there is complete
        del pipeline
    print(single_file)
    for weight_format in args.formats:
        output_dir = args.work_dir / f"{FOLDER_STEM}-sf-{weight_format}"
        print(convert_sd3(single_file, output_dir, config=checkpoint, load_t5=False, weight_format=weight_format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
