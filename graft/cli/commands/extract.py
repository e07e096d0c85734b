"""`graft extract`: τ = ALIGNED − BASE into a new vector folder (graft.engines.extract)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from graft.cli.boundary import handles_errors
from graft.cli.console import byte_progress, print_path, stderr, stdout, summary_table
from graft.cli.json_output import check_json_destination, json_on_stdout, table_console, write_json
from graft.cli.options import Force, JsonOpt, PushOpt, Quiet, Verbose
from graft.cli.publish import check_push_target, push_after
from graft.display import shown


@handles_errors
def extract(
    base: Annotated[str, typer.Option("--base", "-b", help="Base (unaligned) model folder or hub id.")],
    aligned: Annotated[str, typer.Option("--aligned", "-a", help="Aligned model folder or hub id, same architecture.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Vector folder to create.")],
    dtype: Annotated[str, typer.Option(
        help="Storage dtype of τ: auto (each tensor's own), bfloat16, float16 or float32 (exact).")] = "auto",
    shard_size: Annotated[str, typer.Option(
        help="Maximum bytes per vector shard (e.g. 5GB, 500MB); 1KB to 1TB.")] = "5GB",
    shared_only: Annotated[bool, typer.Option(
        help="Extract over the names both hold instead of failing when one has extra tensors.")] = False,
    hash_sources: Annotated[bool, typer.Option(
        "--hash/--no-hash", help="Record sha256 of every source weight file in vector.json.")] = True,
    kind: Annotated[str, typer.Option(help="Label stored in the manifest (safety, or e.g. resta).")] = "safety",
    base_revision: Annotated[str | None, typer.Option(
        "--base-revision", help="Branch, tag or commit of a hub base (same as --base org/name@REV).")] = None,
    aligned_revision: Annotated[str | None, typer.Option(
        "--aligned-revision", help="Branch, tag or commit of a hub aligned model.")] = None,
    push_to_hub: PushOpt = None,
    allow_nonfinite: Annotated[bool, typer.Option(
        "--allow-nonfinite", help="Extract even when a source tensor holds NaN/Inf or τ overflows its storage dtype "
                                  "(refused by default).")] = False,
    json_out: JsonOpt = None,
    force: Force = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Extract the task vector τ = ALIGNED − BASE, streamed tensor by tensor, into a vector folder."""
    from graft.core.model_ids import with_revision
    from graft.engines.extract import extract_vector
    from graft.io.hub import resolve_model

    check_push_target(push_to_hub)  # a bad repository id or no token: refused before hours of work, not after
    base_path = resolve_model(with_revision(base, base_revision, "--base-revision"), role="base")
    aligned_path = resolve_model(with_revision(aligned, aligned_revision, "--aligned-revision"), role="aligned")
    check_json_destination(json_out, [base_path, aligned_path], force=force)  # before the work, not after
    with byte_progress(quiet) as progress:
        task = progress.add_task("extract", total=None)
        result = extract_vector(base_path, aligned_path, out, dtype=dtype, shard_size=shard_size, force=force,
                                shared_only=shared_only, hash_sources=hash_sources, kind=kind,
                                allow_nonfinite=allow_nonfinite, progress=lambda n: progress.advance(task, n),
                                on_total=lambda total: progress.update(task, total=total))
    manifest = result.manifest
    if json_out is not None:
        write_json(json_out, {
            "vector": str(result.out), "tensors": len(manifest.tensors), "num_layers": manifest.num_layers,
            "backbone_prefix": manifest.backbone_prefix, "total_norm": manifest.total_norm, "dtype": manifest.dtype,
            "inexact_elements": manifest.inexact_elements, "total_elements": manifest.total_elements,
            "skipped": list(result.skipped)}, [base_path, aligned_path], force=force)
    if not quiet:
        share = manifest.inexact_elements / max(1, manifest.total_elements)
        rows: list[tuple[str, object]] = [
            ("vector", shown(result.out)),
            ("tensors", f"{len(manifest.tensors)} ({manifest.num_layers} layers, backbone "
                        f"'{manifest.backbone_prefix}')"),
            ("‖τ‖", f"{manifest.total_norm:.6g}" if manifest.total_norm is not None else
             "not finite (τ holds NaN/Inf)"),
            ("inexact in storage dtype", f"{manifest.inexact_elements} of {manifest.total_elements} elements "
                                         f"({share:.3%}); use --dtype float32 for exact τ"),
        ]
        if result.skipped:
            rows.append(("skipped (not floating point)", ", ".join(result.skipped[:5])))
        table_console(json_out, stdout, stderr).print(summary_table("graft extract", rows))
    elif not json_on_stdout(json_out):
        print_path(result.out)
    push_after(result.out, push_to_hub, quiet)
