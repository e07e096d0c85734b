"""Tiny real-architecture checkpoints in every on-disk layout graft supports (tests and demo)."""
