"""The `graft` command line (the console script is `graft.cli:main`; `python -m graft.cli` runs it too).

The app and its group live in graft.cli.app, each command in its own module under graft.cli.commands, the options
more than one command takes in graft.cli.options, and the one error boundary in graft.cli.boundary.
"""

from graft.cli.app import app, main

__all__ = ["app", "main"]
