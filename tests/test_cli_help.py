"""The lists in the help texts come from the code (the recipe table, the provider table, the
precisions), so adding a recipe or a provider changes the help without touching the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from edgecnn.export import quantize_recipes
from edgecnn.export.parity import PRECISIONS
from edgecnn.runtime import providers


def _placeholders(text: str) -> list[str]:
    from edgecnn.cli._app import HELP_LISTS

    return [key for key in HELP_LISTS if "{" + key + "}" in text]


def _help(cli, *command: str) -> str:
    result = cli(*command, "--help")
    assert result.code == 0, result.stderr
    return " ".join(result.stdout.split())  # the help wraps lines


def test_quantize_help_lists_every_recipe_and_method(cli):
    text = _help(cli, "quantize")
    for mode, recipe in quantize_recipes.RECIPES.items():
        assert f"{mode} ({recipe.summary})" in text
    assert ", ".join(quantize_recipes.METHODS[:-1]) in text and not _placeholders(text)


def test_a_new_recipe_shows_in_the_help_with_no_cli_change(cli, monkeypatch):
    class Int4(quantize_recipes.Fp16):
        mode, precision, summary = "int4", "int8", "a recipe the CLI has never heard of"

    monkeypatch.setitem(quantize_recipes.RECIPES, "int4", Int4())
    assert "int4 (a recipe the CLI has never heard of)" in _help(cli, "quantize")


@pytest.mark.parametrize("command", ["run", "bench", "check"])
def test_provider_help_comes_from_the_provider_table(cli, command, monkeypatch):
    names = [short for short in providers.SHORT_NAMES if short != "trt"]
    assert all(name in _help(cli, command) for name in ["auto", *names])
    monkeypatch.setitem(providers.SHORT_NAMES, "npu", "NpuExecutionProvider")
    assert "npu" in _help(cli, command)


def test_check_help_lists_the_precisions_and_export_the_export_modes(cli):
    check = _help(cli, "check")
    assert all(precision in check for precision in PRECISIONS)
    export = _help(cli, "export")
    assert " or ".join(quantize_recipes.EXPORT_MODES) in export and not _placeholders(export)


@pytest.mark.parametrize("command", [[], ["run"], ["quantize"], ["check"]])
def test_help_on_the_device_install_without_onnx_or_torch(cli, monkeypatch, command):
    """`pip install edgecnn[cpu]` has neither: every --help crashed with a traceback, as
    filling in the recipe lists imported onnx."""
    from edgecnn.cli import _app

    def missing(module: str, name: str):
        if module.startswith("edgecnn.export"):
            raise ModuleNotFoundError("No module named 'onnx'", name="onnx")
        return real(module, name)

    real = _app._code
    monkeypatch.setattr(_app, "_code", missing)
    text = _help(cli, *command)
    assert "Usage: edgecnn" in text and not _placeholders(text)
    if command == ["quantize"]:
        assert "(the list needs onnx: pip install 'edgecnn[export,cpu]')" in text


def test_version_and_debug_are_in_the_help(cli):
    from edgecnn import __version__

    assert cli("--version").stdout.strip() == f"edgecnn {__version__}"
    text = _help(cli)
    assert "--version" in text and "--debug" in text
    assert "<bool>" not in _help(cli, "check")


def test_api_messages_show_the_flag_of_their_parameter(cli, tmp_path):
    """The API says "batch must be an integer >= 1"; the command line says "--batch must be an
    integer >= 1"."""
    from conftest import assert_one_line_error
    from edgecnn.errors import BadInput
    from edgecnn.export import export_model

    with pytest.raises(BadInput, match=r"^batch must be an integer >= 1, got 0$"):
        export_model("lenet", tmp_path / "x.onnx", batch=0)
    assert_one_line_error(cli("export", "lenet", "--batch", "0", "-o", tmp_path / "x.onnx"), 2,
                          "error: --batch must be an integer >= 1, got 0")
    assert_one_line_error(cli("export", "lenet", "--seed", "1180591620717411303424",
                              "-o", tmp_path / "x.onnx"), 2, "--seed must be an integer in")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("input_size", [
    "a", "64", (1, 2, 3), (3.5, 2), (True, 2), [64, "x"], (2.0 ** 0.5, 4), float("inf"),
    range(10 ** 9),  # read as far as the third item: a tuple of it held gigabytes
    np.array([64, 64, 64]), np.array("64"),
])
def test_an_input_size_that_is_no_size_is_bad_input_in_the_api(tmp_path, input_size):
    """One BadInput naming the parameter (a string gave a ValueError from int(), inf a
    TypeError)."""
    from edgecnn.errors import BadInput
    from edgecnn.export import export_model

    for model, channels in (("lenet", None), ("user_models:MixedNet", 3)):
        with pytest.raises(BadInput, match=r"^input_size takes one int or two \(H, W\), got "):
            export_model(model, tmp_path / "x.onnx", input_size=input_size, in_channels=channels)
    assert list(tmp_path.iterdir()) == []


def test_a_0_d_array_is_one_size(tmp_path):
    """np.array(28) is a size as 28 is (islice raised a TypeError on it)."""
    from edgecnn.export.user_model import height_width

    assert height_width(np.array(28)) == (28, 28) == height_width(np.int64(28))


def test_arguments_of_another_type_are_bad_input_in_the_api(tmp_path):
    """Each names its parameter (were TypeErrors from inside: "argument of type 'int' is not
    iterable", "expected str, bytes or os.PathLike object, not int"); to_onnx takes a numpy
    example as it takes a tensor (was torch.export's dynamic_shapes message)."""
    import numpy as np
    import torch

    from edgecnn.errors import BadInput
    from edgecnn.export import export_model, to_onnx
    from edgecnn.runtime import Engine

    with pytest.raises(BadInput, match=r"^model must be a registered name, a SPEC .* got int$"):
        export_model(42, tmp_path / "x.onnx", input_size=32, in_channels=3)
    with pytest.raises(BadInput, match=r"^model file must be a path, got int$"):
        Engine(5)
    from edgecnn.export import check_parity

    with pytest.raises(BadInput, match=r"^model must be a registered name, a SPEC .* got int$"):
        check_parity(42, tmp_path / "x.onnx")
    conv = torch.nn.Conv2d(3, 4, 3)
    assert to_onnx(conv, np.zeros((1, 3, 8, 8), np.float32)).graph.node
    with pytest.raises(BadInput, match=r"^example must be a tensor or a numpy array, got str$"):
        to_onnx(conv, "x")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_to_onnx_is_one_error_and_nothing_on_stderr(capfd):
    """torch's fake-tensor tracing logged 40 lines of traceback at ERROR before the failure."""
    import torch

    from edgecnn.errors import EdgecnnError
    from edgecnn.export import to_onnx

    flat = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 2))
    with pytest.raises(EdgecnnError, match="^torch.onnx could not export Sequential: "):
        to_onnx(flat, torch.zeros(3, 8, 8))  # a 3-D example: its batch axis is the channels
    assert capfd.readouterr().err == ""
