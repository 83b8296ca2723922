"""Where a LoRA comes from, and how strongly it is applied (issue 23): a path that does not exist fails at once and
offline, a local file loads whatever the hub settings, only `namespace/name` goes to the hub, adapter weights stay
within +-100, and both command lines check `--lora` before any model loads."""

import threading
from pathlib import Path

import numpy as np
import pytest

import sd3_helper
from sd3_openvino.runtime.lora import LoraAdapters, check_lora, read_lora_state_dict
from sd3_openvino.runtime.lora_api import LoraLoaderMixin

RANK, FEATURES = 2, 8
LORA_KEYS = [f"transformer.transformer_blocks.0.attn.to_q.lora_{part}.weight" for part in "AB"]


def save_lora(path: Path, *, extra: dict | None = None) -> Path:
    """A small LoRA file in peft's key format (the transformer's first query projection), plus `extra` tensors."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {LORA_KEYS[0]: np.ones((RANK, FEATURES), np.float32), LORA_KEYS[1]: np.ones((FEATURES, RANK), np.float32)}
    save_file({**tensors, **(extra or {})}, str(path))
    return path


@pytest.fixture
def no_network(monkeypatch) -> list:
    """Network access made unusable: every socket connection and hub request is recorded, then refused."""
    import socket

    import diffusers.loaders.lora_base
    import diffusers.utils.hub_utils
    import huggingface_hub

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise ConnectionError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    for module, name in (
        (huggingface_hub, "hf_hub_download"),
        (huggingface_hub, "model_info"),
        (diffusers.loaders.lora_base, "model_info"),
        (diffusers.utils.hub_utils, "hf_hub_download"),
    ):
        monkeypatch.setattr(module, name, refuse)
    return attempts


@pytest.fixture
def offline(monkeypatch):
    """`HF_HUB_OFFLINE=1` as an offline machine sets it: huggingface_hub reads it at import, and diffusers 0.39 copies
    `huggingface_hub.constants.HF_HUB_OFFLINE` into its modules at import, so those copies are set too."""
    import diffusers.loaders.lora_base
    import diffusers.utils.hub_utils
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for module in (huggingface_hub.constants, diffusers.loaders.lora_base, diffusers.utils.hub_utils):
        monkeypatch.setattr(module, "HF_HUB_OFFLINE", True)


def adapters_of(tmp_path: Path, *, layers: dict | None = None) -> LoraAdapters:
    """`LoraAdapters` without submodels: enough to check sources and weights (writing states then does nothing)."""
    return LoraAdapters(submodels={}, model_dir=tmp_path, layers=layers or {})


def loader_of(adapters: LoraAdapters) -> LoraLoaderMixin:
    """The pipelines' LoRA API (`load_lora_weights`, `set_adapters`, ...) on `adapters`."""
    loader = LoraLoaderMixin()
    loader.lora, loader._call_lock = adapters, threading.RLock()
    return loader


# ----------------------------------------------------------------------------------------------------------
# Sources: paths, hub ids, other types
# ----------------------------------------------------------------------------------------------------------

MISSING_PATHS = ["no_such_dir/style.safetensors", "style.safetensors", "loras/style.bin", "./loras/style", "~/no-such-lora-folder", "a/b/c", "style"]


@pytest.mark.parametrize("source", [*MISSING_PATHS, Path("org/name")], ids=str)
def test_a_path_that_does_not_exist_fails_at_once_and_offline(source, tmp_path, monkeypatch, no_network):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    expected = f"'{source}' does not exist. Pass a LoRA `.safetensors` file, its folder or a hub id"
    with pytest.raises(FileNotFoundError, match=f"^LoRA {expected}"):
        read_lora_state_dict(source)
    with pytest.raises(FileNotFoundError, match=f"^`pretrained_model_name_or_path_or_dict` {expected}"):
        loader_of(adapters_of(tmp_path)).load_lora_weights(source)
    with pytest.raises(FileNotFoundError, match=f"^`--lora` {expected}"):
        check_lora([(source, 1.0)], argument="`--lora`")
    assert no_network == []  # not one connection, not one hub request


def test_only_a_namespace_name_hub_id_goes_to_the_hub(tmp_path, monkeypatch, no_network):
    monkeypatch.chdir(tmp_path)
    assert check_lora([("org/style-lora.v2", 0.5)]) == [("org/style-lora.v2", 0.5)]  # not looked up before loading
    assert no_network == []
    with pytest.raises(ValueError, match="LoRA 'org/style-lora.v2' could not be read"):
        read_lora_state_dict("org/style-lora.v2")
    assert no_network  # the hub was asked (and refused here)


def test_a_local_folder_wins_over_the_hub_id_it_spells(tmp_path, monkeypatch, no_network):
    monkeypatch.chdir(tmp_path)
    save_lora(tmp_path / "org" / "name" / "pytorch_lora_weights.safetensors")
    state_dict, _ = read_lora_state_dict("org/name")
    assert sorted(state_dict) == LORA_KEYS and no_network == []


@pytest.mark.parametrize("source", [5, None, ["style.safetensors"], b"style.safetensors"], ids=repr)
def test_a_source_of_another_type_is_a_type_error(source, tmp_path, no_network):
    with pytest.raises(TypeError, match=r"`pretrained_model_name_or_path_or_dict` has to be a LoRA file or folder \(str or Path\), a hub id"):
        loader_of(adapters_of(tmp_path)).load_lora_weights(source)
    with pytest.raises(TypeError, match="`lora` has to hold LoRA paths or hub ids"):
        check_lora([(source, 1.0)])
    assert no_network == []


# ----------------------------------------------------------------------------------------------------------
# Local files load whatever the hub settings (HF_HUB_OFFLINE=1)
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layout, source",
    [
        ("style.safetensors", "{root}/style.safetensors"),
        ("style.safetensors", "~/style.safetensors"),
        ("lora/pytorch_lora_weights.safetensors", "{root}/lora"),  # diffusers' folder ...
        ("lora/pytorch_lora_weights.safetensors lora/other.safetensors", "{root}/lora"),  # ... its file wins
        ("lora/my_style_v3.safetensors", "{root}/lora"),  # a folder holding one LoRA file under another name
    ],
    ids=["file", "file-in-home", "diffusers-folder", "diffusers-folder-and-another-file", "folder-of-one-file"],
)
def test_a_local_lora_loads_in_offline_mode(layout, source, tmp_path, monkeypatch, offline, no_network):
    monkeypatch.setenv("HOME", str(tmp_path))
    for relative in layout.split():
        save_lora(tmp_path / relative)
    for given in (source.format(root=tmp_path), Path(source.format(root=tmp_path)).expanduser()):
        state_dict, _ = read_lora_state_dict(given)
        assert sorted(state_dict) == LORA_KEYS, given
    assert no_network == []


def test_a_pickled_lora_file_loads_in_offline_mode(tmp_path, offline, no_network):
    import torch
    from safetensors.torch import load_file

    save_lora(tmp_path / "style.safetensors")
    torch.save(load_file(str(tmp_path / "style.safetensors")), tmp_path / "style.bin")
    state_dict, _ = read_lora_state_dict(tmp_path / "style.bin")
    assert sorted(state_dict) == LORA_KEYS and no_network == []


def test_a_folder_without_one_lora_file_is_named(tmp_path, no_network):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("no weights here")
    with pytest.raises(FileNotFoundError, match="'.*empty' is a folder without a LoRA file"):
        read_lora_state_dict(tmp_path / "empty")
    for name in ("style_a.safetensors", "style_b.safetensors"):
        save_lora(tmp_path / "two" / name)
    with pytest.raises(ValueError, match=r"'.*two' holds 2 `.safetensors` files \(style_a.safetensors, style_b.safetensors\)"):
        read_lora_state_dict(tmp_path / "two")
    with pytest.raises(ValueError, match="holds 2 `.safetensors` files"):  # checked before any model loads
        check_lora([(tmp_path / "two", 1.0)])
    assert no_network == []


def test_not_a_lora_quotes_a_key_that_is_not_a_lora_key(tmp_path, no_network):
    lora = save_lora(tmp_path / "mixed.safetensors", extra={"transformer.transformer_blocks.0.norm1.linear.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(ValueError, match=r"is not a LoRA: its tensor names must all contain 'lora', but it holds 'transformer.transformer_blocks.0.norm1.linear.weight'") as error:
        read_lora_state_dict(lora)
    assert "lora_A" not in str(error.value)  # not the file's first key, which is a LoRA key


# ----------------------------------------------------------------------------------------------------------
# Adapter weights: finite, and within +-100
# ----------------------------------------------------------------------------------------------------------

TOO_STRONG = "has to be between -100 and 100 but is {}: adapter weights beyond \\+-100 overflow the model's activations; typical values are -2..2"


@pytest.mark.parametrize(
    "weights, shown",
    [(1e30, "1e\\+30"), ([1.0, -101], "-101"), ([{"transformer": 1e30}, 1.0], "1e\\+30"), (np.float32(200), "200")],
    ids=["one-number", "list", "per-component", "numpy"],
)
def test_set_adapters_refuses_weights_beyond_100(weights, shown, tmp_path):
    loader = loader_of(adapters_of(tmp_path, layers={"a": {"transformer": {}}, "b": {"transformer": {}}}))
    names = ["a", "b"] if isinstance(weights, list) else ["a"]
    with pytest.raises(ValueError, match=TOO_STRONG.format(shown)):
        loader.set_adapters(names, weights)
    assert loader.lora.weights == {} and loader.lora.active == {}  # nothing changed
    loader.set_adapters(["a", "b"], [100, {"transformer": -100.0}])  # the bounds themselves are valid
    assert loader.lora.weights == {"a": {"transformer": 100.0}, "b": {"transformer": -100.0}}


@pytest.mark.parametrize("scale", [1e30, -100.5])
def test_fused_lora_scale_beyond_100_is_refused(scale, tmp_path):
    lora = save_lora(tmp_path / "style.safetensors")
    with pytest.raises(ValueError, match=f"The scale of LoRA '{lora}' in `lora` has to be between -100 and 100"):
        check_lora([(lora, scale)])


# ----------------------------------------------------------------------------------------------------------
# The command lines check `--lora` before any model loads
# ----------------------------------------------------------------------------------------------------------


def never_loads(monkeypatch) -> None:
    """Make loading or converting a model fail loudly (AssertionError is no user error: it is not caught)."""
    from sd3_openvino.export import convert
    from sd3_openvino.runtime.pipeline import OVStableDiffusion3Pipeline

    def load(*args, **kwargs):
        raise AssertionError("a model was loaded before `--lora` was checked")

    monkeypatch.setattr(OVStableDiffusion3Pipeline, "from_pretrained", load)
    monkeypatch.setattr(convert, "convert_sd3", load)  # the CLI imports it when it converts


def bad_lora_flags(tmp_path: Path) -> list[tuple[str, str]]:
    """`--lora` values and the message each one gives."""
    lora = save_lora(tmp_path / "style.safetensors")
    return [
        ("no_such_dir/style.safetensors", "`--lora` 'no_such_dir/style.safetensors' does not exist"),
        ("style", "`--lora` 'style' does not exist"),
        (f"{lora}:1e30", f"The scale of LoRA '{lora}' in `lora` {TOO_STRONG.format('1e+30')}".replace("\\", "")),
    ]


def assert_one_error_line(stderr: str, message: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], stderr


def test_sd3_helper_checks_lora_before_loading_the_model(converted, tmp_path, monkeypatch, capsys, no_network):
    model_dir = converted("fp32", load_t5=False)
    capsys.readouterr()  # the conversion's progress
    monkeypatch.chdir(tmp_path)
    never_loads(monkeypatch)
    for flag, message in bad_lora_flags(tmp_path):
        for command in (
            ["generate", str(model_dir), "--prompt", "a cat", "--output", str(tmp_path / "cat.png"), "--lora", flag],
            ["convert", str(model_dir), str(tmp_path / "converted"), "--lora", flag],
        ):
            assert sd3_helper.main(command) == 2, command
            assert_one_error_line(capsys.readouterr().err, message)
    assert no_network == [] and not (tmp_path / "converted").exists()


def test_gradio_helper_checks_lora_before_loading_the_model(converted, tmp_path, monkeypatch, capsys, no_network):
    import gradio_helper

    model_dir = converted("fp32", load_t5=False)
    capsys.readouterr()  # the conversion's progress
    monkeypatch.chdir(tmp_path)
    never_loads(monkeypatch)
    for flag, message in bad_lora_flags(tmp_path):
        assert gradio_helper.main([str(model_dir), "--lora", flag]) == 2, flag
        assert_one_error_line(capsys.readouterr().err, message)
    assert no_network == []
