"""`edgeq bench BUNDLE... --on user@host`: the same bench, run on the device, its result files brought back.

Over one SSH connection: check that edgeq is installed there (never installed silently), push each
bundle (edgeq.deploy.push: skipped when already there, verified either way), ask the device's own
`edgeq doctor --json` whether it can run each one (bundle format version, runtime, CUDA), copy the
utterances to measure when the dataset is local, run `edgeq bench` there and copy its output folder
back. The files are the device's own: its environment fingerprint (CPU, governor, temperature)
is in every record, in exactly the format of a local run.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Callable
from pathlib import Path

from edgeq.bench.runner import BenchSettings, make_systems
from edgeq.data.datasets import open_dataset
from edgeq.deploy.push import push_over, send_file
from edgeq.deploy.ssh import Remote, SSHError, connect, reraise_if_cut, run, run_sync, sftp_error
from edgeq.errors import EdgeqError
from edgeq.format.bundle import open_bundle

# On the device, beside the bundles: ~/edgeq-data and ~/edgeq-bench, or DIR/... for `--on user@host:DIR`.
DATA_DIR = "edgeq-data"
RESULTS_DIR = "edgeq-bench"


def remote_bench(bundles: list[str], remote: Remote, settings: BenchSettings, remote_edgeq: str = "edgeq",
                 progress: Callable[[str, int, int], None] | None = None, dests: list[str] | None = None,
                 results_dir: str | None = None) -> list[dict]:
    """Run the bench on `remote`; the device's result files land in settings.out; returns the summaries.

    `dests`: where each bundle goes on the device, and `results_dir`: the device's results folder
    (defaults: the remote folder / each bundle's folder name, and edgeq-bench/<name of settings.out>);
    `edgeq sweep --on` passes both, mirroring its cache's layout there."""
    if not bundles:
        raise EdgeqError("--on measures bundles: pass at least one bundle folder")
    local = [open_bundle(b) for b in bundles]
    dests = dests or [None] * len(local)
    # Named as on the device: the system name is the folder name the bundle has there.
    systems = make_systems([d or str(b.path.resolve()) for b, d in zip(local, dests)], [])
    for s in systems:
        results = settings.out / f"{s.name}.jsonl"
        if results.exists() and not (settings.resume or settings.force):
            raise EdgeqError(f"{results} exists: pass --resume to continue that run or --force to start over")
    return run_sync(_bench(local, remote, settings, remote_edgeq, progress, dests, results_dir))


def check_device(remote: Remote, remote_edgeq: str = "edgeq") -> str:
    """Reach `remote` and check that edgeq runs there; returns its `edgeq --version` line."""

    async def check() -> str:
        async with connect(remote) as conn:
            return await _check_edgeq(conn, remote, remote_edgeq)

    return run_sync(check())


async def _bench(local, remote: Remote, settings: BenchSettings, edgeq: str, progress, dests, results_dir) -> list[dict]:
    async with connect(remote) as conn:
        await _check_edgeq(conn, remote, edgeq)
        paths = []
        for b, dest in zip(local, dests):
            pushed = await push_over(conn, b, remote, force=False, progress=progress, dest=dest)
            paths.append(pushed.remote_path)
            await _check_doctor(conn, remote, edgeq, pushed.remote_path, settings.device)
        dataset = await _dataset(conn, remote, settings, progress)
        out = results_dir or posixpath.join(remote.dir or "", RESULTS_DIR, settings.out.resolve().name)
        argv = [edgeq, "bench", *paths, "-d", dataset, "-o", out, "--warmup", str(settings.warmup),
                "--device", settings.device]
        for flag, value in (("--limit", settings.limit), ("--threads", settings.threads), ("--language", settings.language)):
            if value is not None:
                argv += [flag, str(value)]
        argv += ["--spinning", settings.spinning] if settings.spinning != "off" else []
        argv += ["--resume"] * settings.resume + ["--force"] * settings.force + decode_flags(settings.decode)
        argv += noise_flags(settings)
        # summary.json is rewritten at the end of every run: without the old one, a run that dies on the
        # device can never come back looking like a finished one.
        await run(conn, ["rm", "-f", "--", posixpath.join(out, "summary.json")], remote=remote)
        if progress:
            progress(f"bench on {remote.host}", 0, 1)
        result = await run(conn, argv, check=False, remote=remote)
        if progress:
            progress(f"bench on {remote.host}", 1, 1)
        refused = [line for line in str(result.stderr or "").splitlines() if "edgeq: error:" in line]
        if result.exit_status != 0 and refused:
            # Refused before measuring (e.g. results there and no --resume): a summary.json there is an
            # earlier run's and must not come back as this one's.
            raise SSHError(f"{remote}: {refused[-1].split('edgeq: error:', 1)[1].strip()}")
        fetched = await _fetch(conn, out, settings.out)
        if "summary.json" not in fetched:
            lines = [line for line in str(result.stderr or "").splitlines() if line.strip()]
            raise SSHError(f"{remote}: `edgeq bench` failed there: {lines[-1] if lines else result.exit_status}")
    return json.loads((settings.out / "summary.json").read_text())


async def _check_edgeq(conn, remote: Remote, edgeq: str) -> str:
    got = await run(conn, [edgeq, "--version"], check=False, remote=remote)
    if got.exit_status == 127 or "not found" in str(got.stderr or ""):
        raise SSHError(f"edgeq is not installed on {remote} (no `{edgeq}` on the PATH of a non-interactive ssh): "
                       "install it there with `python3 -m pip install 'edgeq[runtime]'` "
                       "or pass --remote-edgeq ~/VENV/bin/edgeq")
    if got.exit_status != 0:
        raise SSHError(f"{remote}: `{edgeq} --version` failed: {str(got.stderr or '').strip().splitlines()[-1:]}")
    return str(got.stdout or "").strip()


async def _check_doctor(conn, remote: Remote, edgeq: str, bundle: str, device: str) -> None:
    got = await run(conn, [edgeq, "doctor", "--json", "--device", device, bundle], check=False, remote=remote)
    try:
        report = json.loads(str(got.stdout or ""))
    except json.JSONDecodeError:
        version = (await run(conn, [edgeq, "--version"], check=False)).stdout
        raise SSHError(f"{remote}: its edgeq ({str(version).strip()}) has no `edgeq doctor --json`; upgrade it there: "
                       "python3 -m pip install -U 'edgeq[runtime]'") from None
    failed = [c for c in report.get("checks", []) if c.get("status") == "fail"]
    if failed:
        c = failed[0]
        fix = f"; fix there: {c['fix']}" if c.get("fix") else ""
        raise SSHError(f"{remote}: {c['message']}{fix}")


async def _dataset(conn, remote: Remote, settings: BenchSettings, progress) -> str:
    """A local dataset is copied (only the utterances measured, with their ids); anything else is the device's."""
    spec = settings.dataset
    if spec.startswith("librispeech:") or not Path(spec).expanduser().exists():
        return spec
    data = open_dataset(spec, limit=settings.limit)
    key = hashlib.sha256(json.dumps([(u.id, u.reference) for u in data.utterances]).encode()).hexdigest()[:12]
    folder = posixpath.join(remote.dir or "", DATA_DIR, f"{Path(spec).name}-{key}")
    rows = []
    async with conn.start_sftp_client() as sftp:
        for i, u in enumerate(data.utterances, 1):
            rel = u.id + u.audio.suffix.lower()
            dst = posixpath.join(folder, rel)
            size = u.audio.stat().st_size
            try:
                have = (await sftp.stat(dst)).size or 0
            except sftp_error() as err:
                reraise_if_cut(err)
                have = 0
            if have != size:  # a whole file is kept; a cut or different one is sent again
                await send_file(sftp, u.audio, dst, 0, size)
            row = {"file": rel}
            if u.reference is not None:
                row["text"] = u.reference
            rows.append(json.dumps(row, ensure_ascii=False))
            if progress:
                progress("copy dataset", i, len(data))
        manifest = posixpath.join(folder, "manifest.jsonl")
        async with sftp.open(manifest, "wb") as f:
            await f.write(("\n".join(rows) + "\n").encode())
    return manifest


async def _fetch(conn, remote_out: str, out: Path) -> list[str]:
    """Copy every file of the device's results folder into `out` (each via a temporary name)."""
    out.mkdir(parents=True, exist_ok=True)
    names = []
    async with conn.start_sftp_client() as sftp:
        try:
            entries = await sftp.listdir(remote_out)
        except sftp_error() as err:
            reraise_if_cut(err)
            return []
        for name in sorted(entries):
            if name in (".", "..") or "/" in name:
                continue
            tmp = out / f".{name}.fetching"
            await sftp.get(posixpath.join(remote_out, name), str(tmp))
            os.replace(tmp, out / name)
            names.append(name)
    return names


def decode_flags(options) -> list[str]:
    """The `edgeq bench` flags that make the device decode as `options` says (the bench's own preset,
    STUDY_OPTIONS, needs none), so a remote run measures what a local one with the same flags would."""
    from edgeq.runtime.decoding import STUDY_OPTIONS

    if options is None or options == STUDY_OPTIONS:
        return []
    flags = ["--beam-size", str(options.beam_size), "--patience", str(options.patience)]
    if options.length_penalty is not None:
        flags += ["--length-penalty", str(options.length_penalty)]
    flags.append("--temperature-fallback" if len(options.temperatures) > 1 else "--no-temperature-fallback")
    flags.append("--condition-on-previous-text" if options.condition_on_previous_text else "--no-condition-on-previous-text")
    flags.append("--vad" if options.vad else "--no-vad")
    flags.append("--timestamps" if options.timestamps else "--no-timestamps")
    flags += ["--encoder-window", options.encoder_window]
    return flags


def noise_flags(settings) -> list[str]:
    """`--noise` for the device's bench; a noise file or folder lives on this machine, not there."""
    if settings.noise_snr_db is None:
        return []
    if settings.noise_source not in ("white", "babble"):
        raise EdgeqError(f"--noise-source {settings.noise_source} with --on: the file is on this machine; copy it to "
                         "the device and run edgeq bench there, or use white or babble")
    return ["--noise", str(settings.noise_snr_db), "--noise-source", settings.noise_source]
