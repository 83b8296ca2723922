"""The demo's command line: `python gradio_helper.py MODEL_DIR [--device CPU] [--host H] [--port N] [--share]
[--lora PATH[:SCALE] ...] [--controlnet DIR ...] [--ip-adapter PATH] [--max-file-size MB]` serves the demo
(`make_demo`) on 127.0.0.1 only by default, and refuses uploads over `MAX_FILE_SIZE_MB` (status 413). With
`--controlnet` it loads an `OVStableDiffusion3ControlNetPipeline`, and the demo gets its ControlNet tab; with
`--ip-adapter`, an IP-Adapter, and every tab gets an image prompt.

What can be checked in a moment is checked before the model loads: the folders, the LoRA arguments, the port. User
mistakes (no model folder, a port in use, a file that is no LoRA) exit with status 2 and one `error: ...` line.
"""

import argparse
import socket
import sys
from pathlib import Path

from ..core.layout import read_model_index
from ..runtime.lora import LORA_SUFFIXES, check_lora, load_adapters, lora_argument  # noqa: F401 (LORA_SUFFIXES: gradio_helper's)
from .ui import MAX_FILE_SIZE_MB, make_demo

DEFAULT_PORT, PORTS_TO_TRY = 7860, 100  # like gradio: the first free port of 7860..7959


class UsageError(Exception):
    """A mistake of the user's (a missing folder, a busy port): reported as one `error:` line, exit status 2."""


def _port(text: str) -> int:
    """`--port` as an int from 1 to 65535; argparse reports anything else with this message and exits 2."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"has to be a whole number from 1 to 65535 but is {text!r}")
    return int(text)


def _megabytes(text: str) -> int:
    """`--max-file-size` as a whole number of megabytes from 1; argparse reports anything else and exits 2."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"has to be a whole number of megabytes from 1 but is {text!r}")
    return int(text)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line's arguments; argparse reports a malformed one (`--port abc`, `--lora x:abc`) and exits 2."""
    parser = argparse.ArgumentParser(prog="gradio_helper.py", description="Serve the SD3 OpenVINO demo.")
    parser.add_argument("model_dir", type=Path, help="a folder written by convert_sd3 (or optimum-cli)")
    parser.add_argument("--device", default="CPU", help="OpenVINO device: CPU, GPU, AUTO, ...")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument(
        "--port", type=_port, default=None, help=f"default: the first free port from {DEFAULT_PORT}"
    )
    parser.add_argument("--share", action="store_true", help="also make a public gradio.live link")
    parser.add_argument(
        "--max-file-size", type=_megabytes, default=MAX_FILE_SIZE_MB, metavar="MB",
        help=f"refuse uploads larger than this (default: {MAX_FILE_SIZE_MB} MB)",
    )
    parser.add_argument(
        "--lora",
        action="append",
        type=lora_argument,
        default=[],
        metavar="PATH[:SCALE]",
        help="load a LoRA adapter (a file, its folder or a hub id; named lora_0, lora_1, ...) for the demo's adapter "
        "choice, which starts on the first one at its SCALE (default 1.0); repeatable",
    )
    parser.add_argument(
        "--controlnet",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="load this ControlNet (a folder written by `sd3_helper.py convert-controlnet`) for the demo's ControlNet "
        "tab; repeatable (multi-ControlNet: the tab's one control image goes to each)",
    )
    parser.add_argument(
        "--ip-adapter",
        type=Path,
        default=None,
        metavar="PATH",
        help="load this IP-Adapter (a folder converted by `convert_sd3_ip_adapter`, or its source folder with "
        "`ip-adapter.safetensors` and `image_encoder/`, converted into MODEL_DIR once): every tab gets an image prompt",
    )
    return parser.parse_args(argv)


def port_is_free(*, host: str, port: int) -> bool:
    """True when a server can listen on `host:port` now (a bind test, as gradio's own; `host` may be a name)."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise UsageError(f"`--host` {host!r} is not an address of this machine ({error}). Try 127.0.0.1.") from error
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free for uvicorn too
        try:
            probe.bind(address)
        except OSError:
            return False
    return True


def choose_port(*, host: str, port: int | None) -> int:
    """`port` if it is free on `host`, else a UsageError; with no `port`, the first free one from `DEFAULT_PORT`."""
    if port is not None:
        if not port_is_free(host=host, port=port):
            raise UsageError(
                f"`--port` {port} on {host} is in use (is another demo still running?). "
                "Stop that server, pass another `--port`, or leave it out to take the first free port."
            )
        return port
    candidates = range(DEFAULT_PORT, DEFAULT_PORT + PORTS_TO_TRY)
    for candidate in candidates:
        if port_is_free(host=host, port=candidate):
            return candidate
    raise UsageError(
        f"ports {candidates.start}-{candidates.stop - 1} on {host} are all in use. Pass a free one with `--port`."
    )


def check_lora_arguments(lora: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """The `--lora` (path, scale) pairs, or a UsageError for a scale out of range or a local path that does not
    exist (`check_lora`), before the model loads (whether a file is a LoRA for this model shows when it is loaded)."""
    try:
        return check_lora(lora, argument="`--lora`")
    except (OSError, ValueError, TypeError) as error:  # a missing file names `--lora` itself; a bad scale does not
        message = str(error)
        raise UsageError(message if message.startswith("`--lora`") else f"`--lora`: {message}") from error


def check_model_dir(model_dir: Path) -> None:
    """A UsageError naming `model_dir` if it is not a converted model folder (fast: before the model loads)."""
    try:
        read_model_index(model_dir)
    except (OSError, ValueError) as error:
        raise UsageError(str(error)) from error


def check_controlnet_dirs(controlnet: list[Path]) -> None:
    """A UsageError naming the first `--controlnet` folder that holds no converted ControlNet (before the model loads)."""
    for folder in controlnet:
        if not (folder / "openvino_model.xml").is_file():
            raise UsageError(
                f"`--controlnet` '{folder}' holds no converted ControlNet (`openvino_model.xml`). Convert one with "
                f"`python sd3_helper.py convert-controlnet CHECKPOINT {folder}`."
            )


def check_ip_adapter_path(ip_adapter: Path | None) -> None:
    """A UsageError naming `--ip-adapter` if its path does not exist (before the model loads); None passes."""
    if ip_adapter is not None and not ip_adapter.exists():
        raise UsageError(
            f"`--ip-adapter` '{ip_adapter}' does not exist. Pass a folder converted by `convert_sd3_ip_adapter`, or the "
            "adapter's source folder (`ip-adapter.safetensors` and `image_encoder/`, e.g. from "
            f"`python sd3_helper.py tiny-ip-adapter CHECKPOINT {ip_adapter}`)."
        )


def load_ip_adapter(pipeline, ip_adapter: Path | None) -> None:
    """Load `--ip-adapter` into `pipeline` (converting a source folder into the model folder once); a folder that is
    no IP-Adapter, or one for another transformer, is a UsageError."""
    if ip_adapter is None:
        return
    try:
        pipeline.load_ip_adapter(ip_adapter)
    except (ValueError, TypeError, OSError, RuntimeError) as error:
        raise UsageError(f"`--ip-adapter` '{ip_adapter}': {error}") from error


def load_pipeline(args: argparse.Namespace):
    """The pipeline the command line asks for: an `OVStableDiffusion3ControlNetPipeline` with `--controlnet`, else an
    `OVStableDiffusion3Pipeline`; a damaged or foreign folder, an unknown device, a ControlNet for another model are a
    UsageError."""
    from ..runtime.controlnet_pipelines import OVStableDiffusion3ControlNetPipeline  # OpenVINO: once the arguments are checked
    from ..runtime.pipeline import OVStableDiffusion3Pipeline

    try:
        if not args.controlnet:
            return OVStableDiffusion3Pipeline.from_pretrained(args.model_dir, device=args.device)
        controlnet = args.controlnet if len(args.controlnet) > 1 else args.controlnet[0]
        return OVStableDiffusion3ControlNetPipeline.from_pretrained(args.model_dir, controlnet=controlnet, device=args.device)
    except (ValueError, TypeError, OSError, RuntimeError) as error:
        raise UsageError(str(error)) from error


def serve(args: argparse.Namespace) -> None:
    """Check the folders, the LoRA scales and the port (in a moment), then load the model (minutes), its ControlNets,
    its LoRA adapters and its IP-Adapter, and serve until stopped."""
    check_model_dir(args.model_dir)
    check_controlnet_dirs(args.controlnet)
    check_ip_adapter_path(args.ip_adapter)
    lora = check_lora_arguments(args.lora)
    port = choose_port(host=args.host, port=args.port)
    pipeline = load_pipeline(args)
    try:
        load_adapters(pipeline, lora)
    except (ValueError, TypeError, OSError, RuntimeError) as error:  # not a LoRA, one for another model
        raise UsageError(f"`--lora`: {error}") from error
    except Exception as error:  # a hub id without network (httpx's errors), say
        sources = ", ".join(repr(source) for source, _ in lora)
        raise UsageError(f"`--lora` {sources} could not be loaded ({type(error).__name__}: {error}).") from error
    load_ip_adapter(pipeline, args.ip_adapter)
    pipeline.set_progress_bar_config(disable=True)  # the UI shows the progress
    demo = make_demo(pipeline)
    try:
        demo.launch(server_name=args.host, server_port=port, share=args.share, max_file_size=f"{args.max_file_size}mb")
    except OSError as error:  # another server took the port while the model loaded
        raise UsageError(f"cannot serve on {args.host}:{port}: {error}") from error


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python gradio_helper.py`; returns the exit status (2 for a mistake of the user's)."""
    args = _parse_args(argv)
    try:
        serve(args)
    except UsageError as error:
        print("error: " + " ".join(str(error).split("\n")), file=sys.stderr)
        return 2
    return 0
