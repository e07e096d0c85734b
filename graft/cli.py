"""The `graft` command line: a thin layer over the Python API (graft.vector, graft.engines.plan, graft.engines.merge).

Exit codes: 0 success, 1 unexpected error (a bug), 2 usage error (bad flag or recipe), 3 input error (missing,
corrupt or unsupported file), 4 incompatible inputs (architectures, names or shapes), 5 output error (exists,
overlaps an input, disk full). Every expected failure prints one line naming the file/tensor/field and the fix.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import signal
import sys
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from graft import __version__
from graft.console import GraftConsole
from graft.demo import DEMO_HOLDOUT, DEMO_SCALES, DEMO_TRIALS
from graft.display import console_text, human_size, printable, shown, use_safe_streams
from graft.errors import EXIT_CODES, GraftError, UsageError
from graft.evals.command import EvalCommand, eval_command
from graft.flag_ranges import DEMO, check, help_range
from graft.inspect.command import inspect_command
from graft.io.guard import finished_outputs, forget_finished, is_stdout, write_file
from graft.recipe import LARGE_LAMBDA, Recipe
from graft.recipe_flags import build_recipe
from graft.search.command import search_command


class _OneLineUsageErrors(TyperGroup):
    """The command group: a flag click refuses itself (not a number, no such option, a missing value) is one
    `error:` line naming the flag, exit 2, as graft's own usage errors are, instead of a box of several lines."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        with _usage_error_line():
            return super().parse_args(ctx, args)

    def invoke(self, ctx: typer.Context) -> Any:
        with _usage_error_line():
            return super().invoke(ctx)


@contextmanager
def _usage_error_line():
    try:
        yield
    except typer.TyperException as exc:  # click's usage errors (typer carries its own copy of click)
        if not exc.format_message():  # `graft` alone: the help was the message
            raise
        where = getattr(getattr(exc, "ctx", None), "command_path", None)
        _say("error:", "bold red", exc.format_message() + (f" (see `{where} --help`)" if where else ""))
        raise typer.Exit(getattr(exc, "exit_code", 2)) from None


app = typer.Typer(
    name="graft",
    cls=_OneLineUsageErrors,
    help="Graft a safety task vector layer-wise into (medical, multimodal) LLM checkpoints.\n\n"
    "Exit codes: " + "; ".join(f"{code} {re.split(r' [(]|:', text, maxsplit=1)[0]}"
                               for code, text in EXIT_CODES.items()),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
stderr = GraftConsole(stderr=True, highlight=False)
stdout = GraftConsole(highlight=False)
F = TypeVar("F", bound=Callable[..., Any])

# -- options declared once, shared by the commands that take them ----------------------------------------------
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print errors, warnings and the final path only.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="More detail; tracebacks for unexpected errors.")]
Force = Annotated[bool, typer.Option(
    "--force", help="Replace a previous graft output (atomically, at the end) if it holds only what graft wrote; "
                    "refused (exit 5, nothing touched) if you added or edited anything in it, and never a folder or "
                    "file graft did not write, nor an input.")]
RecipeOpt = Annotated[Path | None, typer.Option("--recipe", "-r", help="Recipe YAML; flags override its fields.")]
TargetOpt = Annotated[str | None, typer.Option(
    "--target", "-t", help="Target model folder or hub id (org/name, optionally org/name@REVISION).")]
VectorOpt = Annotated[str | None, typer.Option(
    "--vector", help="Vector folder written by `graft extract`, or a hub repository holding one (org/name).")]
TargetRevisionOpt = Annotated[str | None, typer.Option(
    "--target-revision", help="Branch, tag or commit of a hub target (same as --target org/name@REV).")]
VectorRevisionOpt = Annotated[str | None, typer.Option(
    "--vector-revision", help="Branch, tag or commit of a hub vector (same as --vector org/name@REV).")]
PushOpt = Annotated[str | None, typer.Option(
    "--push-to-hub", help="After a successful write, push the output to this hub repository (org/name, created "
                          "private; see `graft push`).")]
ScaleOpt = Annotated[float | None, typer.Option(
    "--scale", "-s", help="Global λ scale: a finite number (|λ| > 10 is warned about).")]
LayersOpt = Annotated[str | None, typer.Option(
    "--layers", help="Per-layer factors, one finite number per layer: '0,0.5,1,...'.")]
BlocksOpt = Annotated[str | None, typer.Option(
    "--blocks", help="Per-block factors over contiguous layer blocks (finite numbers, at most one per layer).")]
PointsOpt = Annotated[str | None, typer.Option(
    "--control-points", help="Factors at evenly spaced depths, linearly interpolated over layers (finite numbers).")]
GroupOpt = Annotated[list[str] | None, typer.Option(
    "--group", "-g", help="Group factor GROUP=F, F finite (attn, mlp, norm, embed, head, vision, other); "
                          "repeatable.")]
MapOpt = Annotated[list[str] | None, typer.Option(
    "--map", help="Name rule 'REGEX=>REPLACEMENT' applied to vector names (re.sub); repeatable.")]
IncludeOpt = Annotated[list[str] | None, typer.Option("--include", help="Only graft target tensors matching REGEX.")]
ExcludeOpt = Annotated[list[str] | None, typer.Option("--exclude", help="Never graft target tensors matching REGEX.")]
OriginOpt = Annotated[str | None, typer.Option("--origin", help="Model the target was fine-tuned from.")]
OrthoOpt = Annotated[bool | None, typer.Option(
    "--orthogonalize/--no-orthogonalize", help="Project τ off τ_med = target − origin, per tensor (needs --origin); "
                                               "the same as --operator orthogonal.")]
OperatorOpt = Annotated[str | None, typer.Option(
    "--operator", help="How τ enters the weights: linear (θ + λτ), orthogonal, dare, trim (see docs/extending.md).")]
OperatorParamOpt = Annotated[list[str] | None, typer.Option(
    "--operator-param", help="An operator parameter KEY=VALUE, e.g. density=0.3 (dare, trim; in (0, 1]), seed=1 "
                             "(dare; an integer), elect_sign=true (trim); repeatable.")]
StrictOpt = Annotated[bool | None, typer.Option(
    "--strict", help="Treat every plan warning as an error (exit 4), e.g. to gate a CI job.")]
PartialOpt = Annotated[bool | None, typer.Option(
    "--allow-partial", help="Graft even when a vector layer lands in a target layer of another structure.")]


def with_revisions(spec: Recipe, target_revision: str | None, vector_revision: str | None) -> Recipe:
    """The recipe with `--target-revision`/`--vector-revision` folded into its hub ids (`org/name@REV`)."""
    from graft.io.hub import with_revision

    if target_revision is None and vector_revision is None:
        return spec
    return spec.model_copy(update={"target": with_revision(spec.target, target_revision, "--target-revision"),
                                   "vector": with_revision(spec.vector, vector_revision, "--vector-revision")})


def _push_after(folder: Path, repo_id: str | None, quiet: bool) -> None:
    """`--push-to-hub`: the same push as `graft push`, once the output is committed."""
    if repo_id is None:
        return
    from graft.io.publish import push as push_folder

    result = push_folder(folder, repo_id)
    if not quiet:
        stderr.print(console_text(f"pushed {shown(folder)} to {result.url or result.repo_id} (private unless it "
                                  "existed)"), soft_wrap=True)


def _say(label: str, style: str, text: str) -> None:
    """One line on stderr: `label` in `style`, then `text`, which may hold names and values read from files (tensor
    names, config values, paths), made printable and never read as markup: the one way a message is printed."""
    stderr.print(Text.assemble((label, style), " ", console_text(text)), soft_wrap=True)


@contextmanager
def _failures(verbose: bool):
    """Expected errors: one line and their exit code. Anything else is a bug: say so, code 1."""
    try:
        yield
    except GraftError as exc:
        _say("error:", "bold red", str(exc))
        raise typer.Exit(exc.exit_code) from None
    except Terminated as exc:
        _say("terminated", "bold red", f"({signal.Signals(exc.signum).name}): {_left_behind()}")
        raise typer.Exit(128 + exc.signum) from None
    except KeyboardInterrupt:
        _say("interrupted:", "bold red", _left_behind())
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        if verbose:
            stderr.print_exception()
        _say("internal error:", "bold red", f"{exc.__class__.__name__}: {exc} (rerun with -v for the traceback)")
        raise typer.Exit(1) from None


def _left_behind() -> str:
    """What an interrupted command leaves: never a partial output, and whatever it had finished before, kept
    (an evaluation's samples written before its results, a search's folder with its finished trials)."""
    kept = finished_outputs()
    if not kept:
        return "no output was finished, and nothing half-written was left behind"
    names = [shown(p) + (f" ({note})" if note else "") for p, note in kept]
    listed = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return f"nothing half-written was left behind; finished before the signal and kept: {listed}"


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP) as an interrupt: the same clean-up as Ctrl-C runs (staging removed), then a non-zero exit."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _terminations():
    """Turn SIGTERM/SIGHUP into `Terminated` in the main thread, once (a second signal during clean-up is ignored,
    so the clean-up finishes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        raise Terminated(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class _PrintableFormatter(logging.Formatter):
    """A log record as one printable line: its message often names a file or a tensor read from one."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


@contextmanager
def _warnings_to_stderr(verbose: bool):
    """graft's log records as one `warning: ...` line each on the stderr of this call."""
    log = logging.getLogger("graft")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PrintableFormatter("%(levelname)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        yield
    finally:
        log.removeHandler(handler)


def handles_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verbose = bool(kwargs.get("verbose"))
        forget_finished()  # what an interrupt reports as kept is this command's own
        with _failures(verbose), _terminations(), _warnings_to_stderr(verbose):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _warn(note: str) -> None:
    """A plan warning: printed whatever -q says (only --strict changes what it does)."""
    _say("warning:", "bold yellow", note)


def _print_path(path: Path) -> None:
    """The path a command wrote, alone on stdout (`-q`: what a script reads), taken literally."""
    stdout.print(Text(shown(path)), soft_wrap=True, highlight=False)


def _table(title: str, rows: list[tuple[str, object]]) -> Table:
    """A two-column summary table; every value is taken literally and made printable (it may name files and
    tensors)."""
    table = Table(title=title, show_header=False)
    for label, value in rows:
        table.add_row(label, console_text(value))
    return table


def _note_unused_origin(origin: str | None, spec: Recipe) -> None:
    """`--origin` given to an operator that never reads it: said, not refused (a script may pass it to every
    operator, as a search does; recipes keep it silently for the same reason)."""
    if origin and not spec.operator_spec.uses_origin:
        _warn(f"--origin {origin}: operator {spec.operator_spec.name} does not use the origin; it is not read")


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=stderr, disable=quiet or not stderr.is_terminal, transient=True,
    )


# -- commands -------------------------------------------------------------------------------------------------------
@app.command()
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
    force: Force = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Extract the task vector τ = ALIGNED − BASE, streamed tensor by tensor, into a vector folder."""
    from graft.io.hub import resolve_model, with_revision
    from graft.vector import extract_vector

    if push_to_hub is not None:
        from graft.io.hub import check_hub_id
        from graft.io.publish import hub_token

        check_hub_id(push_to_hub, "--push-to-hub")  # a bad repository id or no token: refused before hours of
        hub_token(None)  # work, not after
    base_path = resolve_model(with_revision(base, base_revision, "--base-revision"), role="base")
    aligned_path = resolve_model(with_revision(aligned, aligned_revision, "--aligned-revision"), role="aligned")
    with _progress(quiet) as progress:
        task = progress.add_task("extract", total=None)
        result = extract_vector(base_path, aligned_path, out, dtype=dtype, shard_size=shard_size, force=force,
                                shared_only=shared_only, hash_sources=hash_sources, kind=kind,
                                allow_nonfinite=allow_nonfinite, progress=lambda n: progress.advance(task, n))
    manifest = result.manifest
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
        stdout.print(_table("graft extract", rows))
    else:
        _print_path(result.out)
    _push_after(result.out, push_to_hub, quiet)


@app.command()
@handles_errors
def plan(
    recipe: RecipeOpt = None,
    target: TargetOpt = None,
    vector: VectorOpt = None,
    target_revision: TargetRevisionOpt = None,
    vector_revision: VectorRevisionOpt = None,
    scale: ScaleOpt = None,
    layers: LayersOpt = None,
    blocks: BlocksOpt = None,
    control_points: PointsOpt = None,
    group: GroupOpt = None,
    map: MapOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    origin: OriginOpt = None,
    orthogonalize: OrthoOpt = None,
    operator: OperatorOpt = None,
    operator_param: OperatorParamOpt = None,
    strict: StrictOpt = None,
    allow_partial: PartialOpt = None,
    list_all: Annotated[bool, typer.Option("--list", help="List every tensor with its action and λ.")] = False,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Write the full plan as JSON to this file; `-` (or /dev/stdout) writes it to standard output "
                       "and the table to stderr.")] = None,
    force: Force = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Show what a merge would do, from headers only; exit 4 if anything is incompatible (or, with --strict,
    questionable)."""
    from graft.engines.merge import check_warnings, close_plan, open_plan, planned_output
    from graft.report import plan_as_dict, print_plan

    spec = build_recipe(recipe, target=target, vector=vector, scale=scale, layers=layers, blocks=blocks,
                        control_points=control_points, group=group, map=map, include=include, exclude=exclude,
                        origin=origin, orthogonalize=orthogonalize, operator=operator,
                        operator_param=operator_param, strict=strict, allow_partial=allow_partial)
    _note_unused_origin(origin, spec)
    merge_plan = open_plan(with_revisions(spec, target_revision, vector_revision))
    try:
        planned_output(merge_plan)  # the output's names, as merge checks them: a collision is exit 3 here too
        if json_out:
            origin = [merge_plan.origin.root] if merge_plan.origin else []
            inputs = [merge_plan.target.root, merge_plan.vector.root, *origin, *([recipe] if recipe else [])]
            write_file(json_out, json.dumps(plan_as_dict(merge_plan), indent=2) + "\n", inputs=inputs, force=force,
                       flag="--json")
        if not quiet:  # with the JSON on stdout, the table for the eye goes to stderr
            print_plan(merge_plan, stderr if json_out and is_stdout(json_out) else stdout, list_all=list_all)
        merge_plan.check()
        check_warnings(merge_plan, _warn if quiet else None)  # without -q the plan table lists them
    finally:
        close_plan(merge_plan)


@app.command()
@handles_errors
def merge(
    recipe: RecipeOpt = None,
    target: TargetOpt = None,
    vector: VectorOpt = None,
    out_dir: Annotated[str | None, typer.Option("--out", "-o", help="Output folder (created atomically).")] = None,
    target_revision: TargetRevisionOpt = None,
    vector_revision: VectorRevisionOpt = None,
    scale: ScaleOpt = None,
    layers: LayersOpt = None,
    blocks: BlocksOpt = None,
    control_points: PointsOpt = None,
    group: GroupOpt = None,
    map: MapOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    origin: OriginOpt = None,
    orthogonalize: OrthoOpt = None,
    operator: OperatorOpt = None,
    operator_param: OperatorParamOpt = None,
    dtype: Annotated[str | None, typer.Option(
        help="Output dtype: auto (the target's), bfloat16, float16, float32.")] = None,
    shard_size: Annotated[str | None, typer.Option(
        help="Re-shard the output to at most this many BYTES per file (e.g. 5GB; 1KB to 1TB); default mirrors the "
             "target.")] = None,
    device: Annotated[str | None, typer.Option(help="Compute device: auto, cpu or cuda.")] = None,
    chunk_size: Annotated[str | None, typer.Option(
        help="Bytes of a tensor processed at once (bounds memory; 1KB to 4GB); default 8MB on CPU, 64MB on "
             "CUDA.")] = None,
    strict: StrictOpt = None,
    allow_partial: PartialOpt = None,
    results: Annotated[Path | None, typer.Option(
        "--results", help="A `graft eval` results.json of this graft: its scores go into the model card "
                          "(model-index).")] = None,
    push_to_hub: PushOpt = None,
    force: Force = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Graft the vector into the target: θ' = θ + λ(layer, group)·τ, streamed to a new HF folder."""
    from graft.engines.merge import merge as run_merge
    from graft.report import print_plan_summary

    spec = build_recipe(recipe, target=target, vector=vector, out=out_dir, scale=scale, layers=layers,
                        blocks=blocks, control_points=control_points, group=group, map=map, include=include,
                        exclude=exclude, origin=origin, orthogonalize=orthogonalize, operator=operator,
                        operator_param=operator_param, dtype=dtype,
                        shard_size=shard_size, device=device, chunk_size=chunk_size, strict=strict,
                        allow_partial=allow_partial)
    _note_unused_origin(origin, spec)
    spec = with_revisions(spec, target_revision, vector_revision)
    if push_to_hub is not None:
        from graft.io.hub import check_hub_id
        from graft.io.publish import hub_token

        check_hub_id(push_to_hub, "--push-to-hub")  # a bad repository id or no token: refused before the merge,
        hub_token(None)  # not after
    with _progress(quiet) as progress:
        task = progress.add_task("merge", total=None)

        def started(merge_plan: Any, total: int) -> None:
            progress.update(task, total=total)
            if verbose:
                print_plan_summary(merge_plan, stderr)

        result = run_merge(spec, force=force, progress=lambda n: progress.advance(task, n), on_plan=started,
                           on_warning=_warn, results=results)
    if quiet:
        _print_path(result.out)
    else:
        stdout.print(_table("graft merge", [
            ("output", shown(result.out)), ("tensors", f"{result.grafted} grafted, {result.copied} copied unchanged"),
            ("written", f"{human_size(result.bytes_written)} in {result.seconds:.1f} s on {result.device}")]))
    _push_after(result.out, push_to_hub, quiet)


@app.command()
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
    from graft.io.publish import push as push_folder

    result = push_folder(folder, repo_id, private=private, revision=revision, commit_message=commit_message,
                         token=token)
    if quiet:
        stdout.print(console_text(result.url or result.repo_id), soft_wrap=True)
        return
    where = f"{result.repo_id}" + (f" (branch {result.revision})" if result.revision else "")
    stdout.print(console_text(f"pushed {shown(folder)} ({result.kind}) to {where}: {result.url or result.commit}"),
                 soft_wrap=True)


@app.command("recipe")
@handles_errors
def recipe_command(
    from_scores: Annotated[Path, typer.Option(
        "--from-scores", help="A `graft inspect --target T --origin O --out DIR` report folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Recipe YAML to write.")],
    metric: Annotated[str, typer.Option(
        help="Score of each layer × group cell: cos_tau_med (cosine between τ and the target's own update), "
             "safelora_score, safelora_min, ratio or tau_norm.")] = "cos_tau_med",
    threshold: Annotated[float, typer.Option(
        help="Graft a cell when its score is below this (see --above). Range: the metric's own, [-1, 1] for the "
             "cosines (cos_tau_med, safelora_*), ≥ 0 for ratio and tau_norm.")] = 0.0,
    above: Annotated[bool, typer.Option("--above", help="Graft cells whose score is above the threshold instead.")
                     ] = False,
    scale: Annotated[float, typer.Option("--scale", "-s", help="λ of every selected cell. Range: a finite number.")
                     ] = 1.0,
    groups: Annotated[str, typer.Option(
        help="Module groups that may be selected, comma-separated (the others get factor 0).")] = "attn,mlp",
    target: TargetOpt = None,
    vector: VectorOpt = None,
    origin: OriginOpt = None,
    force: Force = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Write a recipe that grafts τ only into the layer × group cells whose inspect score crosses a threshold
    (SafeMERGE-style selection); use it with `graft merge --recipe` or as `graft search --recipe` to search λ
    inside the selection."""
    from graft.inspect.select import recipe_from_scores

    chosen = tuple(g.strip() for g in groups.split(",") if g.strip())
    selection = recipe_from_scores(from_scores, metric=metric, threshold=threshold, above=above, scale=scale,
                                   groups=chosen, target=target, vector=vector, origin=origin)
    recipe = selection.recipe
    if abs(scale) > LARGE_LAMBDA:  # what `graft plan` of this recipe would say, said when it is written
        _warn(f"--scale {scale:g}: λ = {scale:g} on every selected tensor is far outside what a graft uses (|λ| > "
              f"{LARGE_LAMBDA:g}); check the scale")
    inputs = [from_scores, *(p for p in (recipe.target, recipe.vector, recipe.options.origin) if p)]
    written = write_file(out, f"# Written by `graft recipe --from-scores`; {recipe.description}\n" + recipe.to_yaml(),
                         inputs=inputs, force=force)
    if quiet:
        _print_path(written)
        return
    cells = ", ".join(f"{'-' if layer is None else layer}:{group} ({score:.3g})"
                      for layer, group, score in selection.cells[:12])
    stdout.print(_table("graft recipe", [
        ("recipe", shown(written)),
        ("selected", f"{len(selection.cells)} of {selection.scored} scored cells, {len(selection.tensors)} tensors"),
        ("cells", cells + (f" (+{len(selection.cells) - 12} more)" if len(selection.cells) > 12 else ""))]))


@app.command()
@handles_errors
def demo(
    workdir: Annotated[Path, typer.Option("--workdir", help="Where the demo's vector, merged models, evaluations and "
                                          "plot go (a folder made by an earlier demo is rebuilt, unless you added or "
                                          "edited something in it).")] = Path(
        "graft-demo"),
    cache: Annotated[Path | None, typer.Option("--cache", help="Where the toy world is cached (default: $GRAFT_CACHE, "
                                               "else ~/.cache/graft).")] = None,
    scales: Annotated[str, typer.Option(
        "--scales", help="Global λ values to graft and evaluate, comma-separated (also the search's uniform "
                         "baselines). Range: finite numbers.")] = ",".join(f"{s:g}" for s in DEMO_SCALES),
    limit: Annotated[int | None, typer.Option(
        "--limit", help="Items per benchmark each search trial scores, within the search part (default: all of "
                        "it); the table always scores every item." + help_range(DEMO, "limit"))] = None,
    holdout: Annotated[float, typer.Option(
        "--holdout", help="Share of every benchmark the search never sees; the table and the verdict are computed "
                          "on it (0: no split, every figure in sample)." + help_range(DEMO, "holdout"))
    ] = DEMO_HOLDOUT,
    rebuild_world: Annotated[bool, typer.Option("--rebuild-world", help="Retrain the toy world even if cached.")
                             ] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N for the evaluations.")] = "auto",
    trials: Annotated[int, typer.Option("--trials", help="graft search budget on the toy world, baselines included "
                                        "(0 skips the search)." + help_range(DEMO, "trials"))] = DEMO_TRIALS,
    seed: Annotated[int, typer.Option("--seed", help="The toy world's seed (its data and training; another seed "
                                      "trains another world) and the search's." + help_range(DEMO, "seed"))] = 0,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Run the method on the trained toy world: extract τ, evaluate, graft a λ grid, search per-layer λ, plot.

    The toy world (a tiny base / aligned / medical-VLM trio that shows safety forgetting) is trained on the first
    run (a few minutes on a CPU) and cached. Rebuilds a folder made by an earlier demo; refuses any other
    non-empty folder.
    """
    from graft.demo import run_demo

    try:
        grid = [float(x) for x in scales.split(",") if x.strip()]
    except ValueError as e:
        raise UsageError(f"--scales {scales}: expected comma-separated numbers, e.g. 0.5,1,1.5") from e
    check(DEMO, limit=limit, holdout=holdout, trials=trials, seed=seed)
    for value in grid:
        DEMO["scales"].check(value)
    run_demo(workdir, console=stdout if not quiet else GraftConsole(quiet=True), cache=cache, scales=grid, limit=limit,
             rebuild_world=rebuild_world, device=device, search_trials=trials, seed=seed, holdout=holdout)


@app.command("examples")
@handles_errors
def examples_command(
    out: Annotated[Path, typer.Argument(help="A new folder for the example recipes, search eval config and CI job.")],
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Copy the example configs shipped with graft (recipes, a `graft search` eval config pointed at the installed
    benchmark fixtures, a CI merge job) into a new folder, to start from."""
    from graft.examples import copy_examples

    written = copy_examples(out, force=force)
    for path in written:
        stdout.print(Text(shown(path) if quiet else f"wrote {shown(path)}"), soft_wrap=True)


app.command("eval", cls=EvalCommand)(handles_errors(eval_command))
app.command("inspect")(handles_errors(inspect_command))
app.command("search")(handles_errors(search_command))


def version_callback(value: bool) -> None:
    if value:
        stdout.print(f"graft {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True)] = False,
) -> None:
    """graft: parameter-space model surgery for safety."""
    from graft.plugins import load_plugins

    with _failures(False):  # benchmarks and judges registered in $GRAFT_PLUGINS or by installed packages
        load_plugins()


def main() -> None:
    use_safe_streams()  # the one place the streams are set up: no message ever fails on the terminal's encoding
    app(prog_name="graft")


if __name__ == "__main__":
    sys.exit(main())
