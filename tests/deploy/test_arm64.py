"""The emulated Raspberry Pi: a bundle built here on x86 transcribes under arm64 with the same tokens.

`pytest -m arm64`. The arm64 Debian root (qemu-user, cached at $EDGEQ_ARM64_ROOT, default
/var/cache/edgeq-ci/arm64-root) is prepared by .ci/arm64-root.sh, which .ci/run calls; these tests
build the wheel from this checkout, `pip install 'edgeq-*.whl[runtime]'` into the root's venv
(its dependencies are cached there, so only edgeq itself is installed: ~20 s), copy the bundle in as
a user would (`edgeq pack` here, `edgeq unpack` there) and run `edgeq transcribe`, `edgeq bench` and
`edgeq doctor` under emulation. Emulation is 20-50x slower than the host: these check correctness
on short clips, never speed. Measured on the 2-core CI machine: tiny bundle transcribe of a 2 s
tone 27 s (the encoder always sees a 30 s window); see the README's Deploy section for the totals.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from helpers import REPO, SPEECH_DEV, edgeq, tone

ROOT = Path(os.environ.get("EDGEQ_ARM64_ROOT", "/var/cache/edgeq-ci/arm64-root"))
SCRIPT = REPO / ".ci" / "arm64-root.sh"


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the arm64 tier needs root (binfmt_misc, chroot), as in CI"
    if not (ROOT / "opt" / "edgeq-venv" / ".deps-key").is_file():
        return f"no arm64 root at {ROOT}: prepare it with `bash .ci/arm64-root.sh` (qemu-user-static, ~5-17 min once)"
    handler = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    if not handler.is_file() or not handler.read_text().startswith("enabled"):
        return "binfmt_misc has no enabled qemu-aarch64 handler: run `bash .ci/arm64-root.sh`"
    return None


pytestmark = [pytest.mark.arm64, pytest.mark.slow,
              pytest.mark.skipif(_unavailable() is not None, reason=_unavailable() or "")]


def in_arm64(*argv, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "run", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "EDGEQ_ARM64_ROOT": str(ROOT)})


@pytest.fixture(scope="module")
def arm64(tmp_path_factory):
    """A work folder inside the root (as seen from there: /tmp/NAME) with this checkout's edgeq installed."""
    name = f"edgeq-arm64-{uuid.uuid4().hex[:8]}"
    work = ROOT / "tmp" / name
    work.mkdir(parents=True)
    # edgeq's cache in the root (HOME=/root there) starts empty, as on a new Pi, and is not kept: the
    # root is cached between CI runs, and every load of a new bundle leaves ONNX Runtime's prepared
    # graphs there (155 MB for whisper-base int8).
    device_cache = ROOT / "root" / ".cache" / "edgeq"
    shutil.rmtree(device_cache, ignore_errors=True)
    src = tmp_path_factory.mktemp("wheel-src") / "src"
    # A copy: building the wheel must not write into the checkout under test.
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv*", "*.egg-info", "__pycache__", "build"))
    wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work), str(src)],
                           capture_output=True, text=True, timeout=600)
    assert wheel.returncode == 0, wheel.stderr[-3000:]
    (whl,) = work.glob("edgeq-*.whl")
    # Uninstall first: the same version number from an earlier run would count as already satisfied.
    pip = in_arm64("sh", "-c", f"pip uninstall -q -y edgeq; pip install -q --disable-pip-version-check "
                               f"'/tmp/{name}/{whl.name}[runtime]'")
    assert pip.returncode == 0, pip.stderr[-3000:]
    yield work, f"/tmp/{name}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(device_cache, ignore_errors=True)


def test_the_root_is_arm64_and_edgeq_there_is_torch_free(arm64):
    _, inside = arm64
    code = ("import platform, importlib.util as u, edgeq, onnxruntime; "
            "print(platform.machine(), [m for m in ('torch', 'transformers', 'onnx') if u.find_spec(m)])")
    out = in_arm64("python3", "-c", code)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[0] == "aarch64" and out.stdout.strip().endswith("[]"), out.stdout


def test_an_x86_bundle_transcribes_under_arm64_with_the_x86_tokens(arm64, tiny_onnx, tmp_path):
    work, inside = arm64
    import soundfile as sf

    archive = tmp_path / "tiny-int8.tar.gz"
    assert edgeq("pack", tiny_onnx.path, "-o", archive).returncode == 0
    shutil.copy(archive, work / archive.name)  # the same bytes a user copies to the Pi
    sf.write(work / "a.wav", tone(2.0), 16000)
    unpacked = in_arm64("sh", "-c", f"cd {inside} && edgeq unpack {archive.name}")
    assert unpacked.returncode == 0 and "all sha256 match" in unpacked.stdout, unpacked.stderr[-2000:]

    # Greedy on both sides: temperature fallback samples, and a random model's near-ties make sampled
    # tokens depend on the last bit of a logit, which ARM and x86 kernels round differently.
    x86 = edgeq("transcribe", tiny_onnx.path, work / "a.wav", "--json", "--no-temperature-fallback")
    assert x86.returncode == 0, x86.stderr[-2000:]
    arm = in_arm64("sh", "-c", f"cd {inside} && edgeq transcribe tiny-int8 a.wav --json --threads 2 --no-temperature-fallback")
    assert arm.returncode == 0, arm.stderr[-3000:]
    x86_row, arm_row = json.loads(x86.stdout), json.loads(arm.stdout)
    assert arm_row["tokens"] == x86_row["tokens"] and arm_row["text"] == x86_row["text"]

    (work / "ds").mkdir()
    shutil.copy(work / "a.wav", work / "ds" / "a.wav")
    (work / "ds" / "manifest.tsv").write_text("file\ttranscript\na.wav\thello world\n")
    bench = in_arm64("sh", "-c", f"cd {inside} && edgeq bench tiny-int8 -d ds/manifest.tsv --threads 2 --warmup 0 -o out")
    assert bench.returncode == 0, bench.stderr[-3000:]
    x86_bench = edgeq("bench", tiny_onnx.path, "-d", work / "ds" / "manifest.tsv", "--threads", "2", "--warmup", "0",
                      "-o", tmp_path / "x86-out")
    assert x86_bench.returncode == 0, x86_bench.stderr[-2000:]

    def utterance(path):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        run = next(r for r in records if r["type"] == "run")
        (utt,) = [r for r in records if r["type"] == "utterance"]
        return run, utt

    run, utt = utterance(work / "out" / "tiny-int8.jsonl")
    x86_run, x86_utt = utterance(next((tmp_path / "x86-out").glob("*.jsonl")))
    assert run["env"]["arch"] == "aarch64" and x86_run["env"]["arch"] == "x86_64"
    assert (utt["hypothesis"], utt["tokens"]) == (x86_utt["hypothesis"], x86_utt["tokens"])

    doctor = in_arm64("sh", "-c", f"cd {inside} && edgeq doctor --json --target rpi5 tiny-int8")
    assert doctor.returncode == 0, doctor.stdout[-3000:] + doctor.stderr[-2000:]
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["arch"]["status"] == "ok" and checks["runtime"]["status"] == "ok"
    assert "emulated" in checks["cpu"]["message"]  # qemu-user shows the x86 host's /proc/cpuinfo


@pytest.mark.real
def test_whisper_base_transcribes_one_real_clip_under_arm64_as_on_x86(arm64, tmp_path_factory):
    """whisper-base onnx-int8-dynamic, built here, on the shortest real clip of speech-dev."""
    import edgeq as lib
    from edgeq.data.datasets import open_dataset

    work, inside = arm64
    clip = min((u for u in open_dataset(SPEECH_DEV).utterances), key=lambda u: u.audio.stat().st_size)
    from helpers import WHISPER_BASE

    bundle = lib.build("onnx-int8-dynamic", model=str(WHISPER_BASE), out=tmp_path_factory.mktemp("wb") / "base-int8",
                       language="en")
    shutil.copytree(bundle.path, work / "base-int8")
    shutil.copy(clip.audio, work / f"clip{clip.audio.suffix}")
    x86 = edgeq("transcribe", bundle.path, clip.audio, "--json")
    assert x86.returncode == 0, x86.stderr[-2000:]
    arm = in_arm64("sh", "-c", f"cd {inside} && edgeq transcribe base-int8 clip{clip.audio.suffix} --json --threads 2")
    assert arm.returncode == 0, arm.stderr[-3000:]
    assert json.loads(arm.stdout)["tokens"] == json.loads(x86.stdout)["tokens"]
