"""`edgeq doctor [BUNDLE] [--target NAME]`: can this host run that bundle, and if not, the one command that fixes it.

Each check compares one fact about the host (edgeq.deploy.host) with what the bundle's manifest or
the target asks for, and yields ok, warn (runs, but not as well as it could) or fail (will not run,
or would silently run somewhere else: a CUDA bundle must never fall back to the CPU unnoticed).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgeq.errors import EdgeqError
from edgeq.format.bundle import FORMAT_VERSION, open_bundle
from edgeq.spec.catalogue import backend_spec
from edgeq.spec.targets import Target, expected_peak_mb, load_target
from edgeq.util import installed_versions

# Peak RSS of whisper-base bundles measured by `edgeq bench` (README "Measured results", 8 utterances):
# ONNX: 296-335 MB for 60-86 MB bundles and 606 MB for the 295 MB fp32 one -> about size + 220 MB.
# torch: 624-817 MB for 52-294 MB bundles (importing torch alone is ~400 MB) -> about 1.3 x size + 520 MB.
# NVIDIA's onnxruntime-gpu wheels for Jetson, per JetPack major (not PyPI's: its aarch64 wheels are CPU-only).
JETSON_ORT = {
    "6": "pip uninstall -y onnxruntime && pip install onnxruntime-gpu --index-url https://pypi.jetson-ai-lab.io/jp6/cu126",
    "5": "pip uninstall -y onnxruntime && pip install the onnxruntime-gpu wheel for JetPack 5 from NVIDIA's Jetson Zoo",
}


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok", "warn" or "fail"
    message: str
    fix: str | None = None


@dataclass
class Report:
    host: dict
    needs: dict
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(c.status == "fail" for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    def to_dict(self) -> dict:
        return {"ok": self.ok, "reads_format_version": FORMAT_VERSION, "host": self.host, "needs": self.needs,
                "checks": [asdict(c) for c in self.checks]}


def doctor(bundle: str | Path | None = None, target: str | None = None, device: str | None = None) -> Report:
    from edgeq.deploy.host import describe

    t = load_target(target) if target else None
    host = describe(Path(bundle).expanduser().resolve().parent if bundle else None)
    report = Report(host=host, needs={})
    b = None
    if bundle is not None:
        try:
            b = open_bundle(bundle)
        except EdgeqError as err:
            report.checks.append(Check("bundle", "fail", str(err), _bundle_fix(str(err))))
        else:
            report.checks.append(Check("bundle", "ok", f"{b.path.name}: {b.name}, format {b.manifest.format_version}, "
                                                       "every file matches its sha256"))
    needs = _needs(b, t, device)
    report.needs = needs
    if t:
        report.checks += _target_checks(host, t)
    if b:
        report.checks += _runtime_checks(host, b)
    elif bundle is None:
        report.checks.append(_onnxruntime_check(host))
    report.checks += _cuda_checks(host, needs, b)
    report.checks += _cpu_checks(host, b)
    if b:
        report.checks += _resource_checks(host, needs, t)
    return report


def _bundle_fix(message: str) -> str | None:
    if "format version" in message:
        return "pip install -U 'edgeq[runtime]' (or rebuild the bundle with this host's edgeq)"
    if "sha256" in message or "missing" in message or "bytes" in message:
        return "copy the bundle again: edgeq push BUNDLE user@host --force"
    return None


def _needs(b, t: Target | None, device: str | None) -> dict:
    needs: dict = {"device": device}
    why = f"--device {device}" if device else None
    if b is not None:
        allowed = list(b.recipe.devices)
        needs.update(runtime=b.runtime, extra=b.manifest.requires.extra,
                     packages=dict(b.manifest.requires.packages), devices=allowed,
                     bundle_mb=round(b.manifest.size.bundle_bytes / 2**20, 1))
        if allowed == ["cuda"] and not device:
            needs["device"], why = "cuda", f"bundle {b.name} runs on cuda only (its recipe says so)"
        # One estimate for doctor and `build --target`: the fit to the measured whisper-base table.
        needs["peak_memory_mb_estimated"] = round(expected_peak_mb(b.runtime, b.manifest.size.weights_bytes))
    if t is not None and not needs["device"]:
        needs["device"], why = t.device, f"target {t.name} runs on {t.device}"
    if t is not None:
        needs.update(target=t.name, arch=t.arch, providers=t.onnx_providers, target_memory_mb=t.memory_mb)
    needs["device"] = needs["device"] or "cpu"
    needs["device_why"] = why
    return needs


def _target_checks(host: dict, t: Target) -> list[Check]:
    out = []
    if host["arch"] != t.arch:
        out.append(Check("arch", "fail", f"this host is {host['arch']}, target {t.name} is {t.arch}",
                         "run `edgeq doctor` on the device itself, or pick the target that describes this host "
                         "(`edgeq targets`)"))
    else:
        out.append(Check("arch", "ok", f"{host['arch']}, as target {t.name}"))
    return out


def _runtime_checks(host: dict, b) -> list[Check]:
    spec = backend_spec(b.recipe.backend)
    extra = spec.device_extra
    # What this bundle's runtime imports, read here and now: host["libraries"] is the benchmark
    # fingerprint's fixed list, which need not name every package a runtime needs.
    libs = {**host["libraries"], **installed_versions(spec.device_packages)}
    out = []
    if b.runtime == "onnxruntime":
        have = libs.get("onnxruntime") or libs.get("onnxruntime-gpu")
        if host["onnxruntime_providers"] is None:
            return [Check("runtime", "fail", "onnxruntime is not installed", f"pip install 'edgeq[{extra}]'")]
        if libs.get("onnxruntime") and libs.get("onnxruntime-gpu"):
            out.append(Check("runtime", "warn", f"both onnxruntime {libs['onnxruntime']} and onnxruntime-gpu "
                             f"{libs['onnxruntime-gpu']} are installed: they share one module and the last "
                             "installed wins", "pip uninstall -y onnxruntime onnxruntime-gpu && pip install ONE of them"))
    else:
        missing = [p for p in spec.device_packages if p not in libs]
        if missing:
            return [Check("runtime", "fail", f"{', '.join(missing)} not installed (bundle runtime {b.runtime})",
                          f"pip install 'edgeq[{extra}]'")]
        have = libs.get(spec.library)
    built = b.manifest.backend.version
    lib = spec.library if b.runtime != "onnxruntime" else "onnxruntime"
    if built and have and _older(have, built):
        out.append(Check("runtime", "warn", f"{lib} {have} is older than the {built} that built the bundle "
                         "(operators it uses may be missing)", f"pip install -U '{lib}>={built}'"))
    else:
        out.append(Check("runtime", "ok", f"{lib} {have} (bundle built with {built})"))
    return out


def _onnxruntime_check(host: dict) -> Check:
    """Without a bundle: can this host run ONNX bundles, the ones a device is meant for?"""
    providers = host["onnxruntime_providers"]
    if providers is None:
        return Check("runtime", "warn", "onnxruntime is not installed: ONNX bundles will not run",
                     "pip install 'edgeq[runtime]'")
    version = host["libraries"].get("onnxruntime") or host["libraries"].get("onnxruntime-gpu")
    return Check("runtime", "ok", f"onnxruntime {version} ({', '.join(providers)})")


def _older(have: str, built: str) -> bool:
    def key(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in v.split("+")[0].split(".")[:2] if p.isdigit())

    return key(have) < key(built)


def _cuda_checks(host: dict, needs: dict, b) -> list[Check]:
    jet = host["jetson"]
    gpu = host["cuda"]["gpu"] or (jet and "Jetson GPU")
    out = []
    allowed = needs.get("devices", ["cpu", "cuda"])
    if needs["device"] not in allowed:
        return [Check("device", "fail", f"bundle {b.name} runs on {', '.join(allowed)} only (its recipe says so), "
                      f"not {needs['device']}", f"run it with --device {allowed[0]} on a device that has one")]
    if jet:
        out.append(Check("jetpack", "ok" if jet.get("jetpack") else "warn",
                         f"Jetson, L4T {jet.get('l4t')} = JetPack {jet.get('jetpack') or 'unknown'}; CUDA builds of "
                         "onnxruntime, torch and CTranslate2 must match this JetPack release "
                         "(PyPI's aarch64 wheels are CPU-only)"))
    if needs["device"] != "cuda":
        return out
    why = needs.get("device_why") or "cuda"
    if not gpu:
        out.append(Check("cuda", "fail", f"{why}, but this host has no NVIDIA GPU (no nvidia-smi, no /dev/nvidia*)",
                         "run it on a CUDA device, or build for the CPU: edgeq build -r onnx-int8-dynamic --target rpi5"))
        return out
    cuda = host["cuda"]
    out.append(Check("cuda", "ok", f"{gpu}; CUDA toolkit {cuda['toolkit'] or 'not found'}, driver CUDA "
                     f"{cuda['driver_cuda'] or 'unknown'}"))
    runtime = needs.get("runtime")
    if runtime in (None, "onnxruntime"):
        providers = host["onnxruntime_providers"]
        if providers is not None and "CUDAExecutionProvider" not in providers:
            if jet:
                major = (jet.get("jetpack") or "6")[0]
                fix = JETSON_ORT.get(major, JETSON_ORT["6"])
                msg = ("onnxruntime here has no CUDA provider: PyPI's aarch64 onnxruntime wheels are CPU-only; "
                       f"a Jetson needs NVIDIA's onnxruntime-gpu built for JetPack {jet.get('jetpack') or '?'}")
            else:
                fix = "pip uninstall -y onnxruntime && pip install onnxruntime-gpu"
                msg = f"onnxruntime here has no CUDA provider (has {', '.join(providers)})"
            out.append(Check("cuda-runtime", "fail", msg + "; edgeq refuses to fall back to the CPU", fix))
        elif providers is not None:
            out.append(Check("cuda-runtime", "ok", f"onnxruntime providers: {', '.join(providers)}"))
    if runtime == "torch":
        tc = host["torch_cuda"]
        if tc is None:
            fix = ("install NVIDIA's torch wheel for JetPack " + (jet.get("jetpack") or "?")) if jet else \
                "pip install torch --index-url https://download.pytorch.org/whl/cu126"
            out.append(Check("cuda-runtime", "fail", "torch here is a CPU build"
                             + (" (PyPI's aarch64 torch has no Jetson GPU support)" if jet else ""), fix))
        elif tc:
            out.append(Check("cuda-runtime", "ok", f"torch built with CUDA {tc}"))
    if host["ctranslate2_cuda_devices"] == 0:
        out.append(Check("ctranslate2", "warn", "CTranslate2 (faster-whisper baselines) sees no CUDA device: PyPI's "
                         "aarch64 CTranslate2 is CPU-only",
                         "build CTranslate2 from source with -DWITH_CUDA=ON against this JetPack's CUDA" if jet
                         else "pip install -U ctranslate2 (a CUDA 12 build)"))
    return out


def _cpu_checks(host: dict, b) -> list[Check]:
    flags = set(host["cpu"]["flags"])
    model = host["cpu"]["model"]
    int8 = b is not None and b.recipe.weights.format in ("int8", "int4")
    if host["arch"] == "arm64":
        if "sse2" in flags:  # an arm64 Python reading an x86 /proc/cpuinfo: qemu-user emulation (as in CI)
            return [Check("cpu", "warn", f"arm64 emulated on {model} (qemu-user): correct results, but speed and CPU "
                          "features here say nothing about a real device", None)]
        if "asimd" not in flags and flags:
            return [Check("cpu", "fail", f"{model}: no NEON/asimd; ONNX Runtime's arm64 kernels need it", None)]
        if int8 and "asimddp" not in flags:
            return [Check("cpu", "warn", f"{model}: no int8 dot-product (asimddp, as on a Pi 4's Cortex-A72): "
                          "int8 matmuls run on slower NEON paths", None)]
        return [Check("cpu", "ok", f"{model}; {' '.join(host['cpu']['key_flags']) or 'no key flags reported'}")]
    if host["arch"] == "x86_64":
        if "avx2" not in flags:
            return [Check("cpu", "warn", f"{model}: no AVX2; int8 and fp32 kernels fall back to SSE (several x slower)")]
        vnni = {"avx512_vnni", "avx_vnni"} & flags
        return [Check("cpu", "ok", f"{model}; AVX2{', VNNI' if vnni else ' (no VNNI: int8 gains less)'}")]
    return [Check("cpu", "warn", f"{model} ({host['arch']}): edgeq is tested on x86_64 and (emulated) arm64 only")]


def _resource_checks(host: dict, needs: dict, t: Target | None) -> list[Check]:
    out = []
    peak = needs["peak_memory_mb_estimated"]
    total, avail = host["memory_total_mb"], host["memory_available_mb"]
    line = f"needs ~{peak} MB at peak (estimated from its size); {avail} of {total} MB free"
    if peak > total:
        out.append(Check("memory", "fail", line, "use a smaller bundle (e.g. onnx-int4) or a device with more RAM"))
    elif peak > avail:
        out.append(Check("memory", "warn", line + ": close other programs or add swap", None))
    else:
        out.append(Check("memory", "ok", line))
    if t is not None and peak > t.memory_mb:
        out.append(Check("memory", "warn", f"~{peak} MB exceeds target {t.name}'s {t.memory_mb} MB", None))
    free = host["disk_free_mb"]
    if free < 200:
        out.append(Check("disk", "warn", f"{free} MB free beside the bundle: bench results and logs need room",
                         "free some space (du -sh ~/* | sort -h)"))
    else:
        out.append(Check("disk", "ok", f"{free} MB free"))
    return out
