"""Progress of long runs (`graft eval`'s items, `graft search`'s trials, `graft inspect`'s tensors): a rich bar
with counts, rate and ETA on a terminal; on anything else (CI logs, files) plain lines as steps finish (at most
every few seconds where steps are many and short), so logs stay readable; nothing with `-q` (the console is then
quiet)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from graft.display import PLAIN_EVERY, StepProgress  # one progress class, beside the console: the API uses it too


@contextmanager
def library_bars_off(quiet: bool) -> Iterator[None]:
    """With `-q`, no progress bars from transformers or huggingface_hub ("Loading weights: 100%|...", downloads)
    for the command's duration; their earlier state comes back afterwards (the Python API is not left silenced)."""
    if not quiet:
        yield
        return
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    transformers_on, hub_off = hf_logging.is_progress_bar_enabled(), hub_utils.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if transformers_on:
            hf_logging.enable_progress_bar()
        if not hub_off:
            hub_utils.enable_progress_bars()


__all__ = ["PLAIN_EVERY", "StepProgress", "library_bars_off"]
