"""What every command module shares: the consoles, the --data option, the context."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from coffre.app import Context, build_context
from coffre.errors import CoffreError
from coffre.model import Actor
from coffre.settings import Settings, load_settings


# Tracebacks never show local variables: they may hold patient data.
def _typer(help_text: str) -> typer.Typer:
    return typer.Typer(
        help=help_text, no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False
    )


out = Console()
err = Console(stderr=True)

DataOption = Annotated[Path, typer.Option("--data", "-d", help="The archive's data folder.")]
OPERATOR = Actor.system("cli")


def _settings(data: Path) -> Settings:
    return load_settings(data, os.environ)


@contextmanager
def _context(data: Path) -> Iterator[Context]:
    try:
        ctx = build_context(_settings(data))
    except CoffreError as exc:
        err.print(f"[red]error:[/red] {escape(exc.reason)}")
        raise typer.Exit(2) from None
    try:
        yield ctx
    except CoffreError as exc:
        err.print(f"[red]error:[/red] {escape(exc.reason)}")
        raise typer.Exit(1) from None
    finally:
        ctx.close()


@contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int], None]]:
    with Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err, transient=False,
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


