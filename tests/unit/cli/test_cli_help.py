"""Every option and argument of every ``modelport`` command says what it is for.

Typer builds its commands on a click of its own (``typer._click`` in recent
releases), so the walk goes by what the objects do (``list_commands``,
``params``) rather than by click's classes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import typer
from typer.main import get_command
from typer.testing import CliRunner

from modelport.cli.main import app


def walk(command: Any, path: str = "modelport") -> Iterator[tuple[str, Any]]:
    """``(command path, command)`` for the app and every group and command under it."""
    yield path, command
    if hasattr(command, "list_commands"):
        ctx = command.context_class(command, info_name=path.rsplit(" ", 1)[-1])
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, f"{path} {name}"
            yield from walk(sub, f"{path} {name}")


def undocumented(command: Any) -> list[str]:
    """The parameters of ``command`` without help text (``--help`` itself aside)."""
    missing = []
    for param in command.params:
        if param.name == "help" and param.param_type_name == "option":
            continue
        help_text = getattr(param, "help", None)
        if not (help_text and help_text.strip()):
            missing.append(param.opts[0] if param.opts else str(param.name))
    return missing


def test_every_parameter_has_help() -> None:
    commands = list(walk(get_command(app)))
    paths = {path for path, _ in commands}
    # The walk reaches every level: the root, groups, nested groups and their commands.
    assert {"modelport", "modelport models list", "modelport deploy canary start"} <= paths
    assert {"modelport keys list", "modelport audit export", "modelport serve"} <= paths
    missing = {path: names for path, command in commands if (names := undocumented(command))}
    assert not missing, f"parameters without help text: {missing}"


def test_every_command_has_a_summary() -> None:
    missing = [path for path, command in walk(get_command(app)) if not command.help]
    assert not missing, f"commands without help: {missing}"


def test_the_walk_catches_a_parameter_without_help() -> None:
    probe = typer.Typer()

    @probe.command()
    def first(name: str, count: int = typer.Option(1, help="How many.")) -> None:
        """A command with one undocumented argument."""

    @probe.command()
    def second() -> None:
        """Another, so that the app is a group."""

    found = dict(walk(get_command(probe), "probe"))
    assert undocumented(found["probe first"]) == ["name"]
    assert undocumented(found["probe second"]) == []


def test_help_of_each_listing_command_fits_80_columns() -> None:
    runner = CliRunner()
    for args in (["models", "list"], ["deploy", "history"], ["keys", "list"], ["audit", "export"]):
        result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        assert "--json" in result.output
        assert max(len(line) for line in result.output.splitlines()) <= 80
