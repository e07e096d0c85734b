"""Helpers for tests and examples, not used by graft itself: tiny real-architecture checkpoints in every on-disk layout
graft reads and writes (graft.testing.layouts)."""
