"""The command table: every command is a module with add_arguments and run, `--device` is one
argument type everywhere, errors map to exit codes, and `mmfuse --help` stays light."""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import io
import subprocess
import sys

import pytest

from mmfuse.cli import (
    COMMANDS,
    EXIT_DATA,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Group,
    UsageError,
    build_parser,
    common,
    main,
)
from mmfuse.encoders.base import EncoderError
from mmfuse.errors import ManifestError, MmfuseError
from mmfuse.model.config import ConfigError


def modules(table: dict = COMMANDS) -> list[str]:
    found = []
    for entry in table.values():
        found += modules(entry.commands) if isinstance(entry, Group) else [entry]
    return found


def subparsers(parser: argparse.ArgumentParser):
    """Every parser below `parser`, groups and commands alike."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield child
                yield from subparsers(child)


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("path", modules())
def test_every_command_module_has_add_arguments_and_a_documented_run(path):
    module = importlib.import_module(path)
    assert callable(module.add_arguments)
    assert module.run.__doc__ and module.run.__doc__.strip()


def test_device_is_one_argument_type_in_every_command():
    with_device = []
    for p in subparsers(build_parser()):
        for action in p._actions:
            if "--device" in action.option_strings:
                assert action.type is common.device_name, p.prog
                with_device.append(p.prog.split()[-1])
    assert {"train", "evaluate", "predict", "detect", "serve", "compress"} <= set(with_device)


def test_a_group_alone_prints_its_help_and_exits_2():
    code, _, err = run(["datasets"])
    assert code == EXIT_USAGE and "make" in err
    code, _, err = run(["datasets", "make"])
    assert code == EXIT_USAGE and "avdigits" in err
    code, out, _ = run([])
    assert code == EXIT_USAGE and "COMMAND" in out


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UsageError, EXIT_USAGE),
        (ManifestError, EXIT_USAGE),
        (ConfigError, EXIT_USAGE),
        (EncoderError, EXIT_USAGE),
        (MmfuseError, EXIT_DATA),
        (KeyboardInterrupt, EXIT_INTERRUPTED),
    ],
)
def test_errors_map_to_exit_codes(monkeypatch, error, code):
    def fail(args):
        """Fail as told."""
        raise error("the message")

    monkeypatch.setattr("mmfuse.cli.demo.run", fail)
    got, out, err = run(["demo"])
    assert got == code and out == ""
    assert err.startswith("mmfuse demo: ")
    assert ("the message" in err) != (error is KeyboardInterrupt)


def test_debug_before_or_after_the_command_shows_the_error(monkeypatch):
    def fail(args):
        """Fail."""
        raise UsageError("the message")

    monkeypatch.setattr("mmfuse.cli.demo.run", fail)
    for argv in (["--debug", "demo"], ["demo", "--debug"]):
        with pytest.raises(UsageError, match="the message"):
            main(argv)


def _loaded(code: str, modules: tuple[str, ...]) -> list[str]:
    """Which of `modules` a fresh interpreter holds after running `code`."""
    code += f"\nimport sys\nprint(sorted(m for m in {modules!r} if m in sys.modules))\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["predict", "--help"], ["anomaly", "fit", "--help"]])
def test_help_imports_neither_torch_nor_the_service(argv):
    # `mmfuse --help` builds only the options of the command it is asked about; `train --help`
    # lists every registered encoder, which is the one help that needs them (and torch).
    code = (
        "import contextlib, io\n"
        "from mmfuse.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        f"    assert main({argv!r}) == 0\n"
        "assert 'usage: mmfuse' in out.getvalue()\n"
    )
    heavy = ("torch", "sklearn", "pandas", "av", "fastapi", "uvicorn", "onnx", "onnxruntime")
    assert _loaded(code, heavy) == []


def test_parsing_builds_the_options_of_the_chosen_command_only():
    argv = ["--debug", "datasets", "make", "avdigits", "out", "--samples", "40"]
    args = build_parser(argv).parse_args(argv)
    assert (args.dir, args.samples, args.debug) == ("out", 40, True)
    # Built for `predict`, the parser knows `train` by name but not its options.
    parser = build_parser(["predict", "run", "data.csv"])
    assert parser.parse_args(["predict", "run", "data.csv"]).command == "predict"
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["train", "data.csv", "--preset", "fast"])
    assert exit_info.value.code == 2
    # Every command stays a choice, so a typo is still one sentence naming them.
    with pytest.raises(SystemExit) as exit_info:
        build_parser(["trian"]).parse_args(["trian"])
    assert exit_info.value.code == 2


def test_predicting_does_not_import_plots_or_scoring():
    # Every `mmfuse predict` process (and each worker of a batch prediction) pays for what the
    # classifier imports; drawing and scoring are loaded only where a report is written.
    code = "import mmfuse.cli, mmfuse.cli.predict, mmfuse.classifier, mmfuse.infer"
    assert _loaded(code, ("matplotlib", "sklearn.metrics", "mmfuse.anomaly")) == []


def test_train_and_evaluate_add_robustness_curves_only_when_asked():
    parser = build_parser()
    for argv in (["train", "train.csv"], ["evaluate", "run", "test.csv"]):
        assert parser.parse_args(argv).robustness is False
        assert parser.parse_args([*argv, "--robustness"]).robustness is True
