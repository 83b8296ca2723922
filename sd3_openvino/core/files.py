"""Writing a converted folder safely: staged folders, atomic JSON, the conversion record, and `model_folder`.

Every writer uses `staged_dir`: a folder is written beside its final place under a hidden name and renamed
into place only when complete, so an interrupted write never leaves files that look finished. `model_folder`
is the one sequence every writer of a whole model folder follows (conversion and int8-hybrid alike):

    with model_folder(output_dir, record=record, model_index=model_index, submodels=names,
                      weight_format=weight_format, overwrite=overwrite) as folder:
        for name in names:
            if not folder.is_finished(name):
                with folder.submodel(name) as staging:
                    ...  # write the IR and its config.json into `staging`

Bottom layer, with `layout.py`: it imports no other module of the project.
"""

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .layout import (
    CONVERSION_RECORD,
    INFORMATIONAL_SOURCE_KEYS,
    MODEL_INDEX,
    OV_MODEL_XML,
    OV_TOKENIZER_XML,
    SCHEDULER_CONFIG,
    is_converted,
    read_conversion_record,
    recorded_weight_format,
)

# ----------------------------------------------------------------------------------------------------------
# Safe writes
# ----------------------------------------------------------------------------------------------------------


def publish(staging_dir: Path, final_dir: Path) -> None:
    """Move a finished staging folder to `final_dir`, replacing an older one without a moment of absence."""
    if final_dir.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.old-", dir=final_dir.parent))
        final_dir.rename(retired / final_dir.name)
        staging_dir.rename(final_dir)
        shutil.rmtree(retired)
    else:
        staging_dir.rename(final_dir)


@contextmanager
def staged_dir(final_dir: str | Path) -> Iterator[Path]:
    """Yield an empty hidden folder beside `final_dir`; publish it as `final_dir` when the block ends normally.

    If the block raises, the staging folder is removed and `final_dir` (new or old) is left as it was.

        with staged_dir(output_dir / "transformer") as staging:
            ov.save_model(model, staging / OV_MODEL_XML)
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.partial-", dir=final_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the published folder gets the usual permissions
    try:
        yield staging
        publish(staging, final_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json_atomically(data: dict, path: Path) -> None:
    """Write `data` as JSON to `path` through a temporary file, so `path` is never half-written."""
    tmp_path = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp_path, path)


def remove_stale_staging(output_dir: Path) -> None:
    """Delete staging folders left in `output_dir` by a writer that was killed."""
    for stale in output_dir.glob(".*.partial-*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    for stale in output_dir.glob(".*.old-*"):
        shutil.rmtree(stale, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------
# Refusals before anything is written: never into the source, never a mix of two conversions
# ----------------------------------------------------------------------------------------------------------


def check_output_outside_source(source: str | Path, output_dir: str | Path) -> None:
    """Raise a ValueError if `output_dir` is the local folder `source`, lies inside it, or contains it."""
    source_path, output_path = Path(source), Path(output_dir)
    if not source_path.is_dir():
        return  # a hub id, or a folder that is not there
    source_resolved, output_resolved = source_path.resolve(), output_path.resolve()
    if output_resolved == source_resolved:
        relation = "is"
    elif source_resolved in output_resolved.parents:
        relation = "is inside"
    elif output_resolved in source_resolved.parents:
        relation = "contains"
    else:
        return
    raise ValueError(
        f"`output_dir` {str(output_dir)!r} {relation} the source folder {str(source)!r}: writing there would replace "
        "or mix with the source's files. Choose an `output_dir` outside the source folder."
    )


def refuse_other_weight_format(output_dir: Path, submodels: list[str], *, weight_format: str) -> None:
    """Raise a ValueError if a finished submodel of `output_dir` holds another weight format than `weight_format`.

    Writers call it before touching anything, so a complete folder stays complete when they refuse.
    """
    for name in sorted(submodels):
        recorded = recorded_weight_format(output_dir / name)
        if recorded not in (None, weight_format):
            raise ValueError(
                f"`{output_dir / name}` was converted with weight_format={recorded!r}, not {weight_format!r}. "
                "Pass `overwrite=True` to convert it again, or choose another `output_dir`."
            )


def _comparable(record: dict) -> dict:
    source = {key: value for key, value in record.get("source", {}).items() if key not in INFORMATIONAL_SOURCE_KEYS}
    return {"source": source, "options": record.get("options", {})}


def refuse_other_conversion(output_dir: Path, record: dict) -> None:
    """Raise a ValueError if `output_dir` holds a conversion of another source or with other options than `record`.

    Writers call it before touching anything (with `overwrite=False`), so a folder is never a mix of two.
    """
    existing = read_conversion_record(output_dir)
    if existing is None or _comparable(existing) == _comparable(record):
        return
    old, new = _comparable(existing), _comparable(record)
    differences = [
        f"{part} {key}: {old[part].get(key)!r} there, {new[part].get(key)!r} now"
        for part in ("source", "options")
        for key in sorted(set(old[part]) | set(new[part]))
        if old[part].get(key) != new[part].get(key)
    ]
    raise ValueError(
        f"`{output_dir}` holds a conversion of another source or with other options ({'; '.join(differences)}). "
        "Pass `overwrite=True` to replace it, or choose another `output_dir`."
    )


def write_conversion_record(output_dir: Path, record: dict) -> None:
    """Record in `output_dir` what it is converted from and how (atomically)."""
    write_json_atomically(record, Path(output_dir) / CONVERSION_RECORD)


@contextmanager
def removed_on_failure(output_dir: Path) -> Iterator[Path]:
    """Create `output_dir` (and missing parents); if the block raises before a finished submodel is published in
    it, remove what this call created. Folders that existed before are never removed; a folder with finished
    submodels is kept, so the next call resumes."""
    output_dir = Path(output_dir)
    created = next((folder for folder in reversed([output_dir, *output_dir.parents]) if not folder.exists()), None)
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield output_dir
    except BaseException:
        if created is not None and not any(is_converted(xml.parent) for xml in output_dir.rglob(OV_MODEL_XML)):
            shutil.rmtree(created, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------------------
# Writing a whole model folder: the one sequence conversion and int8-hybrid share
# ----------------------------------------------------------------------------------------------------------


def component_marker(name: str) -> str:
    """The file whose presence says a copied component is complete: a tokenizer's OpenVINO model, the scheduler's config."""
    return OV_TOKENIZER_XML if name.startswith("tokenizer") else SCHEDULER_CONFIG


class ModelFolder:
    """A model folder being written inside `model_folder`: what it already held, and staged writes into it."""

    def __init__(self, path: Path, *, finished: set[str], overwrite: bool):
        self.path = path
        self.finished = frozenset(finished)  # submodels complete before this call, kept as they are
        self.overwrite = overwrite

    def is_finished(self, name: str) -> bool:
        """True when submodel `name` was complete before this call and is kept (never with `overwrite=True`)."""
        return name in self.finished

    def submodel(self, name: str):
        """A context that yields an empty staging folder and publishes it as `path / name` when the block ends
        normally (`staged_dir`); used for submodels and copied components alike."""
        return staged_dir(self.path / name)

    def needs_component(self, name: str) -> bool:
        """True when the tokenizer or scheduler `name` is to be written: with `overwrite=True`, or when the folder
        lacks a complete one (see `component_marker`)."""
        return self.overwrite or not (self.path / name / component_marker(name)).is_file()


@contextmanager
def model_folder(
    output_dir: str | Path, *, record: dict, model_index: dict, submodels: list[str], weight_format: str, overwrite: bool
) -> Iterator[ModelFolder]:
    """Write a model folder in the block; publish it with `model_index.json` when the block ends normally.

    Before anything is written, and unless `overwrite=True`: the finished submodels among `submodels` must hold
    `weight_format` and the folder's conversion record must equal `record` (else a ValueError that says how to
    proceed), so a refused call leaves a complete folder complete. Then staging folders a killed writer left
    are removed, `model_index.json` is removed (the folder is incomplete until the end) and `record` is written.
    The block writes each submodel not `folder.is_finished(name)` with `folder.submodel(name)`. When it ends
    normally `model_index` is written, last; when it raises, the folders this call created are removed unless a
    finished submodel is in them, so the next call resumes (`removed_on_failure`).
    """
    output_dir = Path(output_dir)
    finished = set() if overwrite else {name for name in submodels if is_converted(output_dir / name)}
    refuse_other_weight_format(output_dir, sorted(finished), weight_format=weight_format)
    if not overwrite:
        refuse_other_conversion(output_dir, record)
    with removed_on_failure(output_dir):
        remove_stale_staging(output_dir)
        (output_dir / MODEL_INDEX).unlink(missing_ok=True)
        write_conversion_record(output_dir, record)
        yield ModelFolder(output_dir, finished=finished, overwrite=overwrite)
    write_json_atomically(model_index, output_dir / MODEL_INDEX)
