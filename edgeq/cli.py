"""The `edgeq` command: parse, call one library function, render. No logic lives here."""

from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from edgeq import __version__
from edgeq.errors import EdgeqError


def _console(stderr: bool = False):
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        # Piped into a file or CI log: keep wide tables whole instead of folding them at 80 columns.
        console = Console(stderr=stderr, highlight=False, width=200)
    return console


def _fail(message: str, code: int = 1):
    _console(stderr=True).print(f"[bold red]edgeq: error:[/] {message}", markup=True, soft_wrap=True)
    sys.exit(code)


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=_console(stderr=True), show_time=False, show_path=False)],
    )
    # Libraries' own chatter (deprecation notices, download bars) is not for our users.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.getLogger("edgeq").setLevel(logging.DEBUG if verbose else logging.INFO)
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|transformers|bitsandbytes|hqq|optimum)\b.*")


@contextmanager
def _progress():
    """A rich progress display fed by the library's progress(stage, done, total) callback."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=_console(stderr=True), transient=True,
    ) as bar:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                for tid in tasks.values():
                    t = bar.tasks[tid] if tid < len(bar.tasks) else None
                    if t is not None and t.total:
                        bar.update(tid, completed=t.total)
                tasks[stage] = bar.add_task(stage, total=max(total, 1))
            bar.update(tasks[stage], completed=done, total=max(total, 1))

        yield update


class EdgeqGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgeqError as err:
            _fail(" ".join(str(err).split()), err.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)


@click.group(cls=EdgeqGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeq")
@click.option("-v", "--verbose", is_flag=True, help="Show debug logging.")
def main(verbose: bool) -> None:
    """Quantize Whisper into self-contained bundles and run them on edge devices."""
    _setup_logging(verbose)


# --------------------------------------------------------------------------- recipes


@main.group(invoke_without_command=True)
@click.pass_context
def recipes(ctx) -> None:
    """List the shipped recipes (or `recipes show NAME`)."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from edgeq.spec.catalogue import BACKENDS
    from edgeq.spec.recipe import list_recipes

    table = Table(title="edgeq recipes")
    for col in ("name", "library", "scheme", "bits", "granularity", "embeddings", "description"):
        table.add_column(col, overflow="fold")
    for r in list_recipes():
        table.add_row(
            r.name, BACKENDS[r.backend].library, r.scheme, r.weights.format, r.granularity_label,
            r.modules.embeddings, r.description,
        )
    _console().print(table)


@recipes.command("show")
@click.argument("name")
def recipes_show(name: str) -> None:
    """Print the resolved recipe NAME (or a recipe file) as TOML."""
    from edgeq.spec.recipe import load_recipe, recipe_to_toml

    click.echo(recipe_to_toml(load_recipe(name)), nl=False)


@main.command()
def targets() -> None:
    """List the device targets (see targets/)."""
    from rich.table import Table

    from edgeq.spec.targets import list_targets

    table = Table(title="edgeq targets")
    for col in ("name", "device", "arch", "threads", "RAM", "torch engine", "recommended recipes", "description"):
        table.add_column(col, overflow="fold")
    for t in list_targets():
        table.add_row(t.name, t.device, t.arch, str(t.threads), f"{t.memory_mb} MB", t.torch_engine,
                      ", ".join(t.recommended), t.description)
    _console().print(table)


# --------------------------------------------------------------------------- build


@main.command()
@click.option("-r", "--recipe", "recipe", required=True, help="Recipe name (see `edgeq recipes`) or path to a .toml file.")
@click.option("-m", "--model", default="openai/whisper-small", show_default=True,
              help="Hub id or local transformers folder of any Whisper checkpoint.")
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Bundle folder [default: bundles/<model>-<recipe>].")
@click.option("--calibration", help="Calibration dataset for static recipes (LibriSpeech folder, manifest, audio folder).")
@click.option("--language", help="Language the bundle decodes by default (e.g. en); unset: detect per file.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Change a recipe value, e.g. --set modules.embeddings=float (repeatable).")
@click.option("--target", help="Check the recipe runs on this target (see `edgeq targets`).")
@click.option("--force", is_flag=True, help="Replace a bundle already at --out.")
def build(recipe: str, model: str, out: Path | None, calibration: str | None, language: str | None,
          sets: tuple[str, ...], target: str | None, force: bool) -> None:
    """Quantize MODEL with RECIPE and write a self-contained bundle."""
    from edgeq.builder.pipeline import build as build_bundle
    from edgeq.spec.recipe import apply_overrides, load_recipe

    resolved = apply_overrides(load_recipe(recipe), sets)
    if target:
        from edgeq.spec.targets import load_target

        t = load_target(target)
        if t.device not in resolved.devices:
            raise EdgeqError(f"recipe {resolved.name} runs on {', '.join(resolved.devices)}; target {t.name} is {t.device}")
    with _progress() as progress:
        bundle = build_bundle(resolved, model=model, out=out, calibration=calibration,
                              language=language, force=force, progress=progress)
    _print_bundle_summary(bundle)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _print_bundle_summary(bundle) -> None:
    size = bundle.manifest["size"]
    m = bundle.manifest
    lines = [
        f"[bold green]built[/] {bundle.path}",
        f"  recipe     {m['recipe']['name']} ({m['backend']['library']} {m['backend']['version'] or ''})",
        f"  source     {m['source']['model']}",
        f"  weights    {_mb(size['reference_fp32_weights_bytes'])} fp32 -> {_mb(size['weights_bytes'])} "
        f"([bold]{size.get('reduction_pct', 0):.1f}% smaller[/])",
        f"  bundle     {_mb(size['bundle_bytes'])} in {len(m['files'])} files",
        f"  took       {m['build']['seconds']:.1f} s",
    ]
    _console().print("\n".join(lines))


# --------------------------------------------------------------------------- transcribe


def _decode_choices(fallback_default: str):
    """Decoding options shared by `transcribe` and `bench` (None: the command's preset decides)."""
    options = [
        click.option("--beam-size", type=int, help="Beam search with N beams (1: greedy) [default: 1]."),
        click.option("--patience", type=float, help="Beam search: stop after beam-size * patience ended beams [default: 1.0]."),
        click.option("--length-penalty", type=float, help="Rank beams by logprob / ((5+len)/6)**A, not / len."),
        click.option("--temperature-fallback/--no-temperature-fallback", "fallback", default=None,
                     help=f"Re-decode a looping or unlikely window at higher temperatures [default: {fallback_default}]."),
        click.option("--condition-on-previous-text/--no-condition-on-previous-text", "condition", default=None,
                     help="Prompt each 30 s window with the text before it [default: on]."),
        click.option("--vad/--no-vad", default=None,
                     help="Skip silence found by Silero VAD (pip install 'edgeq[vad]') [default: off]."),
    ]

    def wrap(f):
        for option in reversed(options):
            f = option(f)
        return f
    return wrap


def _options(preset, beam_size, patience, length_penalty, fallback, condition, vad, timestamps=None):
    from edgeq.runtime.decoding import choose_options

    return choose_options(preset, beam_size=beam_size, patience=patience, length_penalty=length_penalty,
                          fallback=fallback, condition_on_previous_text=condition, timestamps=timestamps, vad=vad)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("audio", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-f", "--format", "fmt", help="txt, srt, vtt, json or tsv: one file per input in --output-dir "
                                             "(printed when no --output-dir is given).")
@click.option("-o", "--output-dir", type=click.Path(path_type=Path), help="Write <audio stem>.<format> here.")
@click.option("--force", is_flag=True, help="Replace transcript files that exist.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file on stdout (same as --format json).")
@click.option("--device", default="cpu", type=click.Choice(["cpu", "cuda"]), show_default=True)
@click.option("--threads", type=int, help="CPU threads for inference.")
@click.option("--language", help="Override the bundle's language (e.g. en).")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of the bundle's files.")
@_decode_choices("on")
def transcribe(bundle: Path, audio: tuple[Path, ...], fmt: str | None, output_dir: Path | None, force: bool,
               as_json: bool, device: str, threads: int | None, language: str | None, no_verify: bool,
               beam_size, patience, length_penalty, fallback, condition, vad) -> None:
    """Transcribe AUDIO files (wav/flac/mp3/ogg, any rate, any length) with BUNDLE."""
    from edgeq.errors import AudioError
    from edgeq.runtime.decoding import DecodeOptions
    from edgeq.runtime.transcriber import load
    from edgeq.runtime.writers import check_format, output_paths, render, write_atomic

    fmt = check_format(fmt or ("json" if as_json else "txt"))
    options = _options(DecodeOptions(), beam_size, patience, length_penalty, fallback, condition, vad)
    targets = output_paths(list(audio), fmt, output_dir, force) if output_dir else [None] * len(audio)
    transcriber = load(bundle, device=device, threads=threads, language=language, verify=not no_verify)
    meta = {"bundle": str(bundle), "manifest_sha256": transcriber.bundle.manifest_sha256}
    err = _console(stderr=True)
    failed = 0
    for path, target in zip(audio, targets):
        try:
            with _progress() as progress:
                result = transcriber.transcribe(path, options=options, progress=progress)
        except AudioError as error:
            failed += 1
            err.print(f"[red]edgeq: error:[/] {error}", soft_wrap=True, markup=True)
            continue
        for gap in result.gaps:
            err.print(f"edgeq: warning: {path} {gap.start:.2f}-{gap.end:.2f} s not transcribed: {gap.reason}",
                      soft_wrap=True, markup=False)
        if target is not None:
            write_atomic(target, render(result, fmt, {"path": str(path), **meta}))
            err.print(f"{path} -> {target}", soft_wrap=True, markup=False)
        elif fmt == "json":
            click.echo(json.dumps({"path": str(path), **meta, **result.to_dict()}, ensure_ascii=False))
        elif fmt == "txt":
            click.echo(f"{path}: {result.text}")
        else:
            click.echo(render(result, fmt), nl=False)
    if failed:
        sys.exit(1)


# --------------------------------------------------------------------------- bench


@main.command()
@click.argument("bundles", nargs=-1, type=click.Path(path_type=Path))
@click.option("-m", "--model", "models", multiple=True, help="Also measure a float checkpoint (hub id or folder).")
@click.option("-d", "--dataset", help="LibriSpeech folder, manifest (.tsv/.jsonl), audio folder, or librispeech:test-clean.")
@click.option("--limit", type=int, help="Only the first N utterances (sorted by id).")
@click.option("--device", default=None, type=click.Choice(["cpu", "cuda"]), help="[default: cpu, or the target's]")
@click.option("--threads", type=int, help="Inference threads [default: the runtime's, or the target's].")
@click.option("--target", help="Take device and threads from a target (see `edgeq targets`).")
@click.option("--warmup", default=1, show_default=True, help="Untimed transcriptions before measuring.")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=Path("bench-results"), show_default=True)
@click.option("--resume", is_flag=True, help="Continue an interrupted run, skipping finished utterances.")
@click.option("--force", is_flag=True, help="Start over, replacing earlier results in --out.")
@click.option("--language", help="Decode in this language (default: the bundle's).")
@click.option("--compare", "compare", multiple=True, type=click.Path(path_type=Path),
              help="Show saved results (summary .json or .jsonl, the first file here, more as arguments) "
                   "side by side instead of running.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="Also save a PNG: WER vs size, RTF.")
@click.option("--no-sampler", is_flag=True, hidden=True, help="Disable the RSS sampler thread (overhead checks).")
@click.option("--timestamps/--no-timestamps", default=None,
              help="Decode clips of 30 s or less with timestamp tokens [default: off, as the study; "
                   "longer audio always uses them].")
@_decode_choices("off")
def bench(bundles, models, dataset, limit, device, threads, target, warmup, out, resume, force, language,
          compare, plot_path, no_sampler, timestamps, beam_size, patience, length_penalty, fallback, condition,
          vad) -> None:
    """Measure WER, peak RAM and latency of BUNDLES (and --model checkpoints) on a dataset."""
    from edgeq.bench.report import load_summaries, plot, render_table

    if compare:
        # `--compare A B`: click gives --compare one value and B lands among BUNDLES; compare them all.
        summaries = load_summaries(list(compare) + list(bundles))
    else:
        from edgeq.bench.runner import BenchSettings, make_systems, run_bench

        if not dataset:
            raise click.UsageError("--dataset is required (or --compare FILES)")
        if limit is not None and limit <= 0:
            raise click.BadParameter("must be positive", param_hint="--limit")
        if target:
            from edgeq.spec.targets import load_target

            t = load_target(target)
            device = device or t.device
            threads = threads or t.threads
        from edgeq.runtime.decoding import STUDY_OPTIONS

        systems = make_systems([str(b) for b in bundles], list(models))
        decode = _options(STUDY_OPTIONS, beam_size, patience, length_penalty, fallback, condition, vad, timestamps)
        settings = BenchSettings(dataset=dataset, out=out, limit=limit, device=device or "cpu", threads=threads,
                                 warmup=warmup, resume=resume, force=force, language=language,
                                 sampler=not no_sampler, decode=decode)
        with _progress() as progress:
            summaries = run_bench(systems, settings, progress)
        _console(stderr=True).print(f"results in {out}/ (one .jsonl per system, summary.json)")
    _console().print(render_table(summaries))
    if plot_path:
        _console(stderr=True).print(f"plot: {plot(summaries, plot_path)}")
    if any("failed" in s for s in summaries):
        sys.exit(1)


# --------------------------------------------------------------------------- info


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check.")
def info(bundle: Path, no_verify: bool) -> None:
    """Check a bundle against its manifest and describe it."""
    from edgeq.format.bundle import open_bundle

    b = open_bundle(bundle, verify_hashes=not no_verify)
    _print_bundle_summary(b)
    _console().print(f"  runtime    {b.runtime}; needs pip install 'edgeq[{b.manifest['requires']['extra']}]'")
    _console().print(f"  integrity  {'all files match their sha256' if not no_verify else 'sizes checked'}")


if __name__ == "__main__":  # pragma: no cover
    main()
