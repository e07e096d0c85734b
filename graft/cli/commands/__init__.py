"""One module per `graft` command, each imported only when its command runs or shows its help (graft.cli.app)."""
