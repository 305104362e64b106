"""The ``wsiseg`` command line: one Typer command per module, errors mapped to exit codes here.

Heavy imports (torch, openslide) happen inside the command bodies so ``wsiseg --help`` stays fast.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.markup import escape

from wsiseg import __version__
from wsiseg.errors import WsisegError, from_os_error

__all__ = ["app", "main"]

app = typer.Typer(
    name="wsiseg",
    help="Federated, differentially private whole-slide segmentation (tumor / stroma / normal).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

_STATE = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wsiseg {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Federated, differentially private whole-slide segmentation (tumor / stroma / normal)."""
    del version
    _STATE["debug"] = debug


def _guard(func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command so a ``WsisegError`` prints one red line and exits with its code.

    This is the one place where an ``OSError`` (read-only file system, full disk, a file where a folder
    should be, no permission...) becomes a :class:`~wsiseg.errors.StorageError` naming the path, the cause
    and the fix (exit 9), for every command.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            try:
                return func(*args, **kwargs)
            except OSError as err:
                raise from_os_error(err) from err
        except WsisegError as err:
            if _STATE["debug"]:
                raise
            from wsiseg.cli._console import console

            console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
            raise typer.Exit(err.exit_code) from None

    return wrapper


def _register() -> None:
    from wsiseg.cli import (
        audit_canary,
        audit_invert,
        cohort_report,
        evaluate,
        export,
        fed_certs,
        fed_client,
        fed_server,
        fed_train,
        info,
        models,
        predict,
        synth,
        tile,
        train,
    )

    commands: list[tuple[str, Callable[..., Any]]] = [
        ("synth", synth.synth),
        ("info", info.info),
        ("tile", tile.tile),
        ("models", models.models),
        ("train", train.train),
        ("fed-train", fed_train.fed_train),
        ("fed-certs", fed_certs.fed_certs),
        ("fed-server", fed_server.fed_server),
        ("fed-client", fed_client.fed_client),
        ("predict", predict.predict),
        ("export", export.export),
        ("cohort-report", cohort_report.cohort_report),
        ("evaluate", evaluate.evaluate),
    ]
    for name, func in commands:
        app.command(name)(_guard(func))
    audit = typer.Typer(name="audit", help="Attack and audit the privacy protections (gradient inversion, canaries).",
                        no_args_is_help=True)  # fmt: skip
    audit.command("invert")(_guard(audit_invert.audit_invert))
    audit.command("canary")(_guard(audit_canary.audit_canary))
    app.add_typer(audit, name="audit")


_register()


def _install_signal_handlers() -> None:
    """Make SIGTERM and SIGHUP stop a command like Ctrl-C (SIGINT): ``KeyboardInterrupt`` in the main process.

    Long commands clean up on ``KeyboardInterrupt`` (``fed-server`` and ``fed-client`` stop their Flower
    processes, which run in sessions of their own and would otherwise outlive a ``kill``; writers remove their
    scratch files). Forked worker processes keep the default action, so pools still stop them with SIGTERM.
    """
    main_pid = os.getpid()

    def interrupt(signum: int, frame: Any) -> None:
        del frame
        if os.getpid() != main_pid:  # a forked worker: die as before
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)


def main() -> None:
    """Console-script entry point."""
    _install_signal_handlers()
    try:
        app()
    except Exception as err:
        if _STATE["debug"]:
            raise
        from wsiseg.cli._console import console

        console.print(
            f"[bold red]internal error:[/] {type(err).__name__}: {escape(str(err))} "
            "(rerun with --debug for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(70)
