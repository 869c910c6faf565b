"""The `edgeq` command: parse, call one library function, render. No logic lives here."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from edgeq import __version__
from edgeq.errors import EdgeqError
from edgeq.spec.protocols import SPINNING
from edgeq.util import one_line

SPINNING_HELP = ("ONNX Runtime's decoder threads spin between operators (decoder) or sleep (off): "
                 "spinning is faster when edgeq has the cores to itself, slower when other work shares them.")


def _console(stderr: bool = False):
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        # Piped into a file or CI log: keep wide tables whole instead of folding them at 80 columns.
        console = Console(stderr=stderr, highlight=False, width=200)
    return console


def _esc(text) -> str:
    """Text that is not ours (paths, names, messages) printed literally: '[/x]' in a path or
    'edgeq[runtime]' in a hint is not rich markup."""
    from rich.markup import escape

    return escape(str(text))


def _fail(message: str, code: int = 1):
    _console(stderr=True).print(f"[bold red]edgeq: error:[/] {_esc(message)}", markup=True, soft_wrap=True)
    sys.exit(code)


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    # Other libraries' loggers show errors only (-v: everything). Seen otherwise: torchao 0.18,
    # imported by transformers when installed (edgeq[compare]), logs a WARNING for each of its CUDA
    # extensions that a CPU torch cannot load and torch one per Enum torchao registers with pytree,
    # eight lines above a one-line error.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.ERROR,
        format="%(message)s",
        handlers=[RichHandler(console=_console(stderr=True), show_time=False, show_path=False)],
    )
    # Libraries' own chatter (deprecation notices, download bars) is not for our users.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if not verbose:
        os.environ.setdefault("TORCH_LOGS", "-all")  # torch's loggers have their own handler: ERROR there
    logging.getLogger("edgeq").setLevel(logging.DEBUG if verbose else logging.INFO)
    # When an SSH connection is cut mid-push, asyncssh's queued writes hit the dead socket and
    # asyncio warns "socket.send() raised exception." once per write after the fifth: the cut is
    # already reported in our one line, so those warnings would only bury it (seen: 3 lines).
    logging.getLogger("asyncio").setLevel(logging.DEBUG if verbose else logging.ERROR)
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
            if ctx.params.get("verbose"):  # -v: the traceback too, for bug reports
                _console(stderr=True).print_exception()
            _fail(one_line(err), err.exit_code)
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
        table.add_row(*map(_esc, (
            r.name, BACKENDS[r.backend].library, r.scheme, r.weights.format, r.granularity_label,
            r.embeddings_label, r.description,
        )))
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
    for col in ("name", "device", "arch", "threads", "spinning", "RAM", "torch engine", "recommended recipes",
                "description"):
        table.add_column(col, overflow="fold")
    for t in list_targets():
        table.add_row(*map(_esc, (t.name, t.device, t.arch, str(t.threads), t.spinning, f"{t.memory_mb} MB",
                                  t.torch_engine, ", ".join(t.recommended), t.description)))
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
@click.option("--max-size", type=float, metavar="MB",
              help="With --recipe auto: per-layer bit-widths from a sensitivity scan on --calibration, to fit N MB.")
def build(recipe: str, model: str, out: Path | None, calibration: str | None, language: str | None,
          sets: tuple[str, ...], target: str | None, force: bool, max_size: float | None) -> None:
    """Quantize MODEL with RECIPE and write a self-contained bundle."""
    from edgeq.builder.pipeline import build as build_bundle
    from edgeq.spec.recipe import apply_overrides, load_recipe

    if recipe == "auto" or max_size is not None:
        _build_auto(recipe, model, out, calibration, language, sets, max_size, force)
        return

    resolved = apply_overrides(load_recipe(recipe), sets)
    with _progress() as progress:
        bundle = build_bundle(resolved, model=model, out=out, calibration=calibration,
                              language=language, force=force, progress=progress, target=target)
    _print_bundle_summary(bundle, "built")
    if target:
        from edgeq.spec.targets import check_memory, expected_peak_mb, load_target

        peak = expected_peak_mb(bundle.runtime, bundle.manifest.size.weights_bytes)
        fit = check_memory(load_target(target), bundle.name, peak)
        _console().print(f"  target     {_esc(fit)}")


def _build_auto(recipe, model, out, calibration, language, sets, max_size, force) -> None:
    from edgeq.builder.mixed import build_auto

    if recipe != "auto" or max_size is None or sets:
        from edgeq.errors import RecipeError

        raise RecipeError("--max-size goes with --recipe auto (and no --set); --recipe auto needs --max-size MB")
    with _progress() as progress:
        bundle, _ = build_auto(model, max_size, calibration, out=out, language=language, force=force,
                               progress=progress)
    _print_bundle_summary(bundle, "built")
    _console().print(f"  recipe     {bundle.path / 'recipe.toml'} (replay: edgeq build --recipe that file)")


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _print_bundle_summary(bundle, headline: str) -> None:
    m = bundle.manifest
    size = m.size
    lines = [
        f"[bold green]{headline}[/] {_esc(bundle.path)}",
        f"  recipe     {_esc(m.recipe.name)} ({_esc(m.backend.library)} {_esc(m.backend.version or '')})",
        f"  layers     {_esc(bundle.layers_summary())}",
        f"  source     {_esc(m.source.model)}",
        f"  weights    {_mb(size.reference_fp32_weights_bytes)} fp32 -> {_mb(size.weights_bytes)} "
        f"([bold]{size.reduction_pct or 0:.1f}% smaller[/])",
        f"  bundle     {_mb(size.bundle_bytes)} in {len(m.files)} files",
        f"  took       {m.build.seconds:.1f} s to build",
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
        click.option("--encoder-window", type=click.Choice(["full", "fit"]),
                     help="fit: encode a clip shorter than 30 s on its own length + 2 s, not a padded 30 s "
                          "window (whisper.cpp's audio_ctx; a broken decode is redone in full) [default: fit]."),
    ]

    def wrap(f):
        for option in reversed(options):
            f = option(f)
        return f
    return wrap


def _options(preset, beam_size, patience, length_penalty, fallback, condition, vad, encoder_window, timestamps=None):
    from edgeq.runtime.decoding import choose_options

    return choose_options(preset, beam_size=beam_size, patience=patience, length_penalty=length_penalty,
                          fallback=fallback, condition_on_previous_text=condition, timestamps=timestamps, vad=vad,
                          encoder_window=encoder_window)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("audio", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-f", "--format", "fmt", help="txt, srt, vtt, json or tsv: one file per input in --output-dir "
                                             "(printed when no --output-dir is given).")
@click.option("-o", "--output-dir", type=click.Path(path_type=Path), help="Write <audio stem>.<format> here.")
@click.option("--force", is_flag=True, help="Replace transcript files that exist.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file on stdout (same as --format json).")
@click.option("--device", default="cpu", type=click.Choice(["cpu", "cuda"]), show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for inference.")
@click.option("--spinning", default="off", show_default=True, type=click.Choice(SPINNING),
              help=SPINNING_HELP)
@click.option("--language", help="Override the bundle's language (e.g. en).")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of the bundle's files.")
@_decode_choices("on")
def transcribe(bundle: Path, audio: tuple[Path, ...], fmt: str | None, output_dir: Path | None, force: bool,
               as_json: bool, device: str, threads: int | None, spinning: str, language: str | None,
               no_verify: bool, beam_size, patience, length_penalty, fallback, condition, vad, encoder_window) -> None:
    """Transcribe AUDIO files (wav/flac/mp3/ogg, any rate, any length) with BUNDLE."""
    from edgeq.errors import AudioError
    from edgeq.runtime.decoding import DecodeOptions
    from edgeq.runtime.transcriber import load
    from edgeq.runtime.writers import check_format, output_paths, render, write_atomic

    fmt = check_format(fmt or ("json" if as_json else "txt"))
    options = _options(DecodeOptions(), beam_size, patience, length_penalty, fallback, condition, vad, encoder_window)
    targets = output_paths(list(audio), fmt, output_dir, force) if output_dir else [None] * len(audio)
    transcriber = load(bundle, device=device, threads=threads, language=language, verify=not no_verify,
                       spinning=spinning)
    meta = {"bundle": str(bundle), "manifest_sha256": transcriber.bundle.manifest_sha256}
    err = _console(stderr=True)
    failed = 0
    for path, target in zip(audio, targets):
        try:
            with _progress() as progress:
                result = transcriber.transcribe(path, options=options, progress=progress)
        except AudioError as error:
            failed += 1
            err.print(f"[red]edgeq: error:[/] {_esc(error)}", soft_wrap=True, markup=True)
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
@click.option("--threads", type=click.IntRange(min=1), help="Inference threads [default: the runtime's, or the target's].")
@click.option("--spinning", type=click.Choice(SPINNING), help=SPINNING_HELP + " [default: off, or the target's]")
@click.option("--target", help="Take device, threads and spinning from a target (see `edgeq targets`).")
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(min=0),
              help="Untimed transcriptions before measuring.")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=Path("bench-results"), show_default=True)
@click.option("--resume", is_flag=True, help="Continue an interrupted run, skipping finished utterances.")
@click.option("--force", is_flag=True, help="Start over, replacing earlier results in --out.")
@click.option("--language", help="Decode in this language (default: the bundle's).")
@click.option("--compare", "compare", multiple=True, type=click.Path(path_type=Path),
              help="Show saved results (summary .json or .jsonl, the first file here, more as arguments) "
                   "side by side instead of running.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="Also save a PNG: WER vs size, RTF.")
@click.option("--noise", "noise_snr", type=float, metavar="SNR_DB",
              help="Mix noise into each utterance at this SNR in dB (seeded: the same noise every run).")
@click.option("--noise-source", default="white", show_default=True,
              help="white, babble (other utterances of the set), or a noise audio file or folder.")
@click.option("--no-sampler", is_flag=True, hidden=True, help="Disable the RSS sampler thread (overhead checks).")
@click.option("--on", "on", metavar="USER@HOST", help="Run on this device over SSH and bring the results back.")
@click.option("--remote-edgeq", default="edgeq", show_default=True, help="The edgeq command on the --on device.")
@click.option("--timestamps/--no-timestamps", default=None,
              help="Decode clips of 30 s or less with timestamp tokens [default: off, as the study; "
                   "longer audio always uses them].")
@_decode_choices("off")
def bench(bundles, models, dataset, limit, device, threads, spinning, target, warmup, out, resume, force, language,
          compare, plot_path, noise_snr, noise_source, no_sampler, on, remote_edgeq, timestamps, beam_size, patience,
          length_penalty, fallback, condition, vad, encoder_window) -> None:
    """Measure WER, peak RAM and latency of BUNDLES (and --model checkpoints) on a dataset."""
    from edgeq.bench.report import load_summaries, plot, render_table

    t = None  # the target, when --target is given
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
            spinning = spinning or t.spinning
        from edgeq.runtime.decoding import STUDY_OPTIONS

        systems = make_systems([str(b) for b in bundles], list(models))
        decode = _options(STUDY_OPTIONS, beam_size, patience, length_penalty, fallback, condition, vad, encoder_window,
                          timestamps)
        settings = BenchSettings(dataset=dataset, out=out, limit=limit, device=device or "cpu", threads=threads,
                                 spinning=spinning or "off",
                                 warmup=warmup, resume=resume, force=force, language=language,
                                 sampler=not no_sampler, decode=decode, noise_snr_db=noise_snr, noise_source=noise_source)
        with _progress() as progress:
            if on:
                summaries = _bench_on(on, models, bundles, settings, remote_edgeq, progress)
            else:
                summaries = run_bench(systems, settings, progress)
        _console(stderr=True).print(f"results in {_esc(out)}/ (one .jsonl per system, summary.json)")
    _console().print(render_table(summaries))
    if not compare and t is not None:
        from edgeq.bench.report import target_fit

        for fits, line in target_fit(summaries, t):
            _console(stderr=not fits).print(("" if fits else "[yellow]warning:[/] ") + _esc(line))
    if plot_path:
        _console(stderr=True).print(f"plot: {_esc(plot(summaries, plot_path))}")
    failed = [s["system"] for s in summaries if "failed" in s]
    if failed:
        sys.exit(1)
    errors = sum(s["errors"] for s in summaries)
    if errors and not compare:  # as `transcribe` does: a run where utterances failed is not a success
        _fail(f"{errors} utterance(s) could not be transcribed (their 'error' lines are in {out}/)")


# --------------------------------------------------------------------------- info


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check.")
def info(bundle: Path, no_verify: bool) -> None:
    """Check a bundle against its manifest and describe it."""
    from edgeq.format.bundle import open_bundle

    b = open_bundle(bundle, verify_hashes=not no_verify)
    _print_bundle_summary(b, "bundle")
    _console().print(f"  runtime    {_esc(b.runtime)}; needs pip install {_esc(repr(f'edgeq[{b.manifest.requires.extra}]'))}")
    # open_bundle refused the bundle unless the manifest lists every file the runtime opens and
    # each one is a regular file inside the folder; with hashes, each also matched its sha256.
    checked = f"{len(b.manifest.files)} listed files, including the {len(b.required_files())} the runtime needs,"
    verdict = "match their sha256" if not no_verify else "have their sizes (sha256 not checked)"
    _console().print(f"  integrity  {checked} {verdict}")
    extra = b.extra_files()
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        _console().print(f"  [yellow]unlisted[/]   {len(extra)} file(s) not in the manifest, never loaded: {_esc(shown)}")


# --------------------------------------------------------------------------- deploy


def _bench_on(on: str, models, bundles, settings, remote_edgeq: str, progress) -> list[dict]:
    from edgeq.deploy.remote import remote_bench
    from edgeq.deploy.ssh import parse_remote

    if models:
        raise click.UsageError("--model baselines run locally only; --on measures bundles")
    return remote_bench([str(b) for b in bundles], parse_remote(on), settings, remote_edgeq, progress)


_MARK = {"ok": "[green]ok  [/]", "warn": "[yellow]warn[/]", "fail": "[bold red]FAIL[/]"}


@main.command()
@click.argument("bundle", required=False, type=click.Path(path_type=Path))
@click.option("--target", help="Also check this host against a target (see `edgeq targets`).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="The device the bundle will run on [default: its own].")
@click.option("--json", "as_json", is_flag=True, help="The host facts and checks as one JSON object.")
def doctor(bundle: Path | None, target: str | None, device: str | None, as_json: bool) -> None:
    """Check that this host can run BUNDLE (or a --target), and say what fixes what is missing."""
    from rich.markup import escape

    from edgeq.deploy.doctor import doctor as run_doctor

    report = run_doctor(bundle, target=target, device=device)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
    else:
        h = report.host
        cuda = h["cuda"]
        lines = [
            f"[bold]host[/]  {h['arch']}, {h['cpu']['model']}{' (' + h['cpu']['board'] + ')' if h['cpu']['board'] else ''}, "
            f"{h['cpu']['logical_cores']} cores, {h['memory_available_mb']}/{h['memory_total_mb']} MB free, "
            f"{h['disk_free_mb']} MB disk free",
            f"      flags: {' '.join(h['cpu']['key_flags']) or '-'}; GPU: {cuda['gpu'] or 'none'}"
            + (f" (CUDA {cuda['toolkit'] or cuda['driver_cuda']})" if cuda["gpu"] else "")
            + (f"; Jetson L4T {h['jetson']['l4t']} = JetPack {h['jetson']['jetpack']}" if h["jetson"] else ""),
        ]
        for c in report.checks:
            lines.append(f"{_MARK[c.status]}  {c.name:<12} {escape(c.message)}")
            if c.fix and c.status != "ok":
                lines.append(f"      {'':<12} fix: [bold]{escape(c.fix)}[/]")
        _console().print("\n".join(lines), soft_wrap=True)
    if not report.ok:
        sys.exit(1)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Archive file [default: BUNDLE.tar.gz].")
@click.option("--force", is_flag=True, help="Replace an archive already at --out.")
def pack(bundle: Path, out: Path | None, force: bool) -> None:
    """Write BUNDLE (verified first) as one .tar.gz file to copy to a device."""
    from edgeq.deploy.pack import pack as pack_bundle

    path = pack_bundle(bundle, out or Path(f"{Path(bundle).resolve().name}.tar.gz"), force=force)
    _console().print(f"[bold green]packed[/] {path} ({_mb(path.stat().st_size)})")


@main.command()
@click.argument("archive", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Bundle folder [default: the archive's folder name].")
@click.option("--force", is_flag=True, help="Replace a bundle already at --out.")
def unpack(archive: Path, out: Path | None, force: bool) -> None:
    """Extract a packed bundle; every file is checked against the manifest before the folder appears."""
    from edgeq.deploy.pack import unpack as unpack_archive

    b = unpack_archive(archive, out, force=force)
    _console().print(f"[bold green]unpacked[/] {b.path} ({b.name}, {len(b.manifest.files)} files, all sha256 match)")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("destination", metavar="USER@HOST[:DIR]")
@click.option("--force", is_flag=True, help="Replace a different bundle of the same name there.")
def push(bundle: Path, destination: str, force: bool) -> None:
    """Copy BUNDLE to a device over SSH (resumable; hashes checked there) into DIR [default: ~/edgeq-bundles]."""
    from edgeq.deploy.push import push as push_bundle
    from edgeq.deploy.ssh import parse_remote

    remote = parse_remote(destination)
    with _progress() as progress:
        result = push_bundle(bundle, remote, force=force, progress=progress)
    where = f"{remote}:{result.remote_path}"
    if result.already_there:
        _console().print(f"[bold green]up to date[/] {where} (same bundle, every sha256 matches there)")
    else:
        resumed = f", {_mb(result.resumed_bytes)} resumed from a cut push" if result.resumed_bytes else ""
        _console().print(f"[bold green]pushed[/] {where} ({_mb(result.sent_bytes)} sent{resumed}; every sha256 matches there)")


# --------------------------------------------------------------------------- sweep and recommend


@main.command()
@click.option("--recipes", "recipe_selector", required=True,
              help="Comma-separated recipe names, globs ('hqq-*'), recipe files, or all. fp32 is always added.")
@click.option("-m", "--model", default="openai/whisper-small", show_default=True,
              help="Hub id or local transformers folder of any Whisper checkpoint.")
@click.option("-d", "--dataset", "datasets", multiple=True, required=True,
              help="Dataset to bench on, as for `edgeq bench` (repeatable); NAME=SPEC names it in the table.")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=Path("sweep-results"), show_default=True,
              help="Results folder: the cache, results.csv/.md, plots/, report.md.")
@click.option("--limit", type=int, help="Only the first N utterances of each dataset.")
@click.option("--device", default="cpu", type=click.Choice(["cpu", "cuda"]), show_default=True)
@click.option("--threads", type=int, help="Inference threads [default: the runtime's].")
@click.option("--language", help="Language the bundles decode (e.g. en); unset: detect per file.")
@click.option("--calibration", help="Calibration dataset for static recipes (keep it apart from the test sets).")
@click.option("--noise", "snrs", multiple=True, type=float, metavar="SNR_DB",
              help="Also bench every recipe with noise mixed in at this SNR (repeatable).")
@click.option("--noise-source", default="white", show_default=True,
              help="white, babble (other utterances of the set), or a noise audio file or folder.")
@click.option("--clean/--no-clean", default=True, show_default=True, help="With --noise: also bench the clean set.")
@click.option("--skip-fp16", is_flag=True, help="Leave out float16 recipes (meant for CUDA; slow on most CPUs).")
@click.option("--executor", default="local", type=click.Choice(["local", "ray"]), show_default=True,
              help="local: one task after the other here; ray: builds and dataset shards as tasks on a Ray cluster.")
@click.option("--address", help="With --executor ray: the cluster to join (host:port, ray://...) [default: a local Ray].")
@click.option("--shard-size", type=int, help="With --executor ray: utterances per bench task [default: 100].")
@click.option("--on", "on", metavar="USER@HOST[:DIR]",
              help="Bench on this device over SSH while this machine builds the next bundles.")
@click.option("--remote-edgeq", default="edgeq", show_default=True, help="The edgeq command on the --on device.")
def sweep(recipe_selector, model, datasets, out, limit, device, threads, language, calibration, snrs, noise_source,
          clean, skip_fp16, executor, address, shard_size, on, remote_edgeq) -> None:
    """Build and bench every recipe on every dataset; write the table, plots and a report (cached, resumable)."""
    from edgeq.sweep import SweepSettings, run_sweep
    from edgeq.sweep.executors import make_executor

    if limit is not None and limit <= 0:
        raise click.BadParameter("must be positive", param_hint="--limit")
    levels = ((None,) if clean or not snrs else ()) + tuple(snrs)
    settings = SweepSettings(recipes=recipe_selector, model=model, datasets=tuple(datasets), out=out, limit=limit,
                             device=device, threads=threads, language=language, calibration=calibration,
                             snrs=levels, noise_source=noise_source, skip_float16=skip_fp16, on=on)
    runner = make_executor(executor, address, shard_size, on, remote_edgeq)
    # Ray's driver prints the cluster's error events (a worker that died, a task retried) straight
    # to sys.stdout from a thread, with no switch to turn them off (ray/_private/worker.py,
    # listen_error_messages): kept out of the table on stdout and out of a one-line error; the
    # sweep says in a note which shards were resumed.
    quiet = contextlib.redirect_stdout(io.StringIO()) if executor == "ray" else contextlib.nullcontext()
    with _progress() as progress, quiet:
        result = run_sweep(settings, progress, runner)
    err = _console(stderr=True)
    for note in result.notes:
        err.print(f"[yellow]note:[/] {note}", soft_wrap=True)
    cached = sum(c.cached for c in result.cells)
    err.print(f"built {len(result.built)} bundles, benched {len(result.measured)} cells, "
              f"{cached} from the cache; results in {out}/ (results.csv, results.md, report.md, plots/)")
    _print_wide(_sweep_table(result.to_dict()))
    if any(c.failed for c in result.cells):
        sys.exit(1)


def _print_wide(table) -> None:
    """A sweep table has two columns per dataset: in a file or CI log keep every cell whole."""
    from rich.measure import Measurement

    console = _console()
    if not console.is_terminal:
        console.width = max(console.width, Measurement.get(console, console.options.update_width(10_000), table).maximum)
    console.print(table)


def _sweep_table(data: dict):
    from rich.table import Table

    from edgeq.sweep.table import cell_text, columns, rows

    cols = columns(data)
    table = Table(title=f"edgeq sweep: {data['model']}")
    for header, _key, fmt in cols:
        table.add_column(header, justify="left" if fmt is None else "right", overflow="fold")
    for r in rows(data):
        cells = [cell_text(r, k, f) for _, k, f in cols]
        if r["failed"]:
            cells[1] = f"[red]failed: {r['failed']}[/]"
        table.add_row(*cells)
    return table


@main.command()
@click.option("--results", "results_dir", type=click.Path(path_type=Path), default=Path("sweep-results"),
              show_default=True, help="Folder written by `edgeq sweep`.")
@click.option("--target", "target_name", required=True, help="Device target (see `edgeq targets`).")
@click.option("--max-wer-increase", type=float, default=None, metavar="POINTS",
              help="Most WER points lost against fp32 on any dataset [default: 1.0].")
@click.option("--max-size", type=float, metavar="MB", help="Largest bundle allowed.")
@click.option("--max-latency", type=float, metavar="S", help="Largest p50 latency per utterance allowed.")
def recommend(results_dir, target_name, max_wer_increase, max_size, max_latency) -> None:
    """Pick the best recipe of a sweep for TARGET under a budget, and say why."""
    from edgeq.spec.targets import load_target
    from edgeq.sweep.recommend import DEFAULT_MAX_WER_INCREASE, Budget
    from edgeq.sweep.recommend import recommend as pick
    from edgeq.sweep.table import load_results

    budget = Budget(DEFAULT_MAX_WER_INCREASE if max_wer_increase is None else max_wer_increase, max_size, max_latency)
    answer = pick(load_results(results_dir), load_target(target_name), budget)
    _console().print("\n".join(answer.lines()), soft_wrap=True, markup=False)


if __name__ == "__main__":  # pragma: no cover
    main()
