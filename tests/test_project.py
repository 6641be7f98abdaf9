"""Project-level rules that every change must keep."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_serving_side_never_imports_torch_or_training():
    # The gateway image ships without torch; importing any avserve module must not pull it in.
    modules = sorted(
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for path in (REPO / "avserve").rglob("*.py")
    )
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'torchaudio', 'training'})\n"
        "assert not leaked, leaked\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr


# Every command of `avserve`, with where it comes from: the serving ones live in avserve/cli.py,
# the others are plugins (pyproject.toml entry points "avserve.commands").
COMMANDS = {
    "probe": "avserve", "serve": "avserve", "classify": "avserve", "triton": "avserve", "monitor": "avserve",
    "data": "training", "train": "training", "evaluate": "training", "pictures": "training", "export": "training",
    "models": "training",
    "bench": "loadtests",
}  # fmt: skip


def test_cli_help_lists_commands():
    result = subprocess.run(
        [sys.executable, "-m", "avserve.cli", "--help"], capture_output=True, text=True, cwd=REPO,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    listed = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("│ ") and len(line.split()) > 2}
    assert set(COMMANDS) <= listed, sorted(set(COMMANDS) - listed)

    from typer.main import get_command
    from typer.testing import CliRunner

    from avserve.cli import build_app

    cli = get_command(build_app())
    assert set(cli.commands) == set(COMMANDS)
    assert set(cli.commands["data"].commands) == {"synth", "info", "import", "subset", "cache"}
    for name, command in cli.commands.items():
        callback = command.callback or next(iter(command.commands.values())).callback  # a group: its first command
        assert callback.__module__.split(".")[0] == COMMANDS[name], name
        help_text = CliRunner().invoke(build_app(), [name, "--help"])  # bench's is argparse's "usage:"
        assert help_text.exit_code == 0 and "usage" in help_text.output.lower(), (name, help_text.output[-400:])


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci


def test_nothing_edits_sys_path():
    """Packages are installed (editable in development); helpers are found through pytest's
    `pythonpath` setting. No module reaches other code by editing the import path."""
    import re

    editing = re.compile(r"sys\.path\s*(\.(insert|append|extend)\b|\+=|\[)")
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for top in ("avserve", "training", "loadtests", "scripts", "tests")
        for path in (REPO / top).rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if editing.search(line) and path != Path(__file__)
    ]
    assert not offenders, offenders
