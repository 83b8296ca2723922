"""What a converted folder records of its origin (`openvino_conversion.json`): the source and the options.

One record function serves every writer: `conversion_record` for a conversion (fp32 ... int4, and the fp16
folder an int8-hybrid one is made from), `hybrid_record` on top of it for int8-hybrid. `core/files.py` writes
the record and refuses a folder whose record differs.
"""

import hashlib
from pathlib import Path

from ..core.layout import HYBRID_WEIGHT_FORMAT
from ..runtime.lora import lora_file_in
from .single_file import SingleFileCheckpoint

SAMPLED_BYTES = 1 << 20  # of a large file, the fingerprint reads the first and the last MiB (and its size)


def _file_digest(path: Path) -> str:
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as file:
        digest.update(file.read(SAMPLED_BYTES))
        if size > 2 * SAMPLED_BYTES:
            file.seek(size - SAMPLED_BYTES)
        digest.update(file.read(SAMPLED_BYTES))
    return digest.hexdigest()


def file_fingerprint(path: str | Path) -> str:
    """A digest of one local file: its size and content (the first and last MiB of a file larger than 2 MiB)."""
    return _file_digest(Path(path))


def checkpoint_fingerprint(folder: str | Path) -> str:
    """A digest of a local checkpoint folder: every file's path, size, and content (the first and last MiB of
    files larger than 2 MiB: any retrained or fine-tuned weights differ there). Hidden files are skipped."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            digest.update(f"{relative.as_posix()}:{_file_digest(path)};".encode())
    return digest.hexdigest()


def lora_options(lora: list[tuple[str, float]]) -> list[dict]:
    """What a conversion record says of its fused LoRAs: source, content digest (local files) and scale."""
    options = []
    for source, scale in lora:
        path = Path(source)
        path = lora_file_in(path, argument="LoRA") if path.is_dir() else path
        options.append({"source": source, "sha256": _file_digest(path) if path.is_file() else None, "scale": scale})
    return options


def conversion_record(
    checkpoint: str | Path, *, revision: str | None, weight_format: str, load_t5: bool, lora: list[tuple[str, float]]
) -> dict:
    """What `CONVERSION_RECORD` holds for a conversion: the source (a hub id and revision, or a local folder's
    fingerprint; a single file's fingerprint and its base) and the options (`weight_format`, whether T5 is converted,
    the fused LoRAs if any)."""
    if isinstance(checkpoint, SingleFileCheckpoint):
        base = conversion_record(checkpoint.config, revision=revision, weight_format=weight_format, load_t5=load_t5, lora=[])["source"]
        base = {key: value for key, value in base.items() if key != "path"}  # a moved base is the same base
        source = {"file_sha256": _file_digest(checkpoint.path), "path": str(checkpoint.path.resolve()), "config": base}
    elif Path(checkpoint).is_dir():
        source = {"fingerprint": checkpoint_fingerprint(checkpoint), "path": str(Path(checkpoint).resolve())}
    else:
        source = {"hub_id": str(checkpoint), "revision": revision}
    options = {"weight_format": weight_format, "load_t5": load_t5, **({"lora": lora_options(lora)} if lora else {})}
    return {"source": source, "options": options}


def hybrid_record(source_record: dict, *, calibration: dict, vae_calibration: dict | None = None, smooth_quant_alpha: float | None = None) -> dict:
    """The conversion record of an int8-hybrid folder: the fp16 folder's source, its options with weight_format
    int8-hybrid, and the calibration settings (the prompts as a digest); with an int8 VAE, `quantize_vae: true`
    and `vae_calibration`; with `smooth_quant_alpha`, that too."""
    prompts_digest = hashlib.sha256("\n".join(calibration["prompts"]).encode()).hexdigest()
    settings = {key: value for key, value in calibration.items() if key != "prompts"} | {"prompts_sha256": prompts_digest}
    options = {**source_record.get("options", {}), "weight_format": HYBRID_WEIGHT_FORMAT, "calibration": settings}
    if vae_calibration is not None:  # absent otherwise, so folders written before the option keep their record
        options |= {"quantize_vae": True, "vae_calibration": vae_calibration}
    if smooth_quant_alpha is not None:  # likewise
        options |= {"smooth_quant_alpha": smooth_quant_alpha}
    return {"source": source_record.get("source", {}), "options": options}
