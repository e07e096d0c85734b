"""`graft push`: a finished merged model or vector folder to the Hugging Face hub (graft.cli.publish)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from graft.cli.boundary import handles_errors
from graft.cli.console import stdout
from graft.cli.options import Quiet, Verbose
from graft.display import console_text, shown


@handles_errors
def push(
    folder: Annotated[Path, typer.Argument(help="A folder written by `graft merge` or `graft extract`.")],
    repo_id: Annotated[str, typer.Argument(help="Hub repository to create or update: org/name.")],
    private: Annotated[bool, typer.Option(
        "--private/--public", help="Visibility of a repository this creates (an existing one keeps its own).")
                       ] = True,
    revision: Annotated[str | None, typer.Option(
        "--revision", "--branch", help="Branch to push to (created from the default branch when missing).")] = None,
    commit_message: Annotated[str | None, typer.Option("--commit-message", "-m", help="The hub commit's message.")
                              ] = None,
    token: Annotated[str | None, typer.Option(
        "--token", help="Hub token with write access (default: $HF_TOKEN, else the `hf auth login` cache).")] = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Publish a merged model or a vector folder to the Hugging Face hub (only a complete graft output)."""
    from graft.cli.publish import push as push_folder

    result = push_folder(folder, repo_id, private=private, revision=revision, commit_message=commit_message,
                         token=token)
    if quiet:
        stdout.print(console_text(result.url or result.repo_id), soft_wrap=True)
        return
    where = f"{result.repo_id}" + (f" (branch {result.revision})" if result.revision else "")
    stdout.print(console_text(f"pushed {shown(folder)} ({result.kind}) to {where}: {result.url or result.commit}"),
                 soft_wrap=True)
