"""A probe bundle, not a recipe: a copy of an ONNX bundle whose decoder graphs run each 8-bit
MatMulNBits as DynamicQuantizeMatMul with int8 weights per output channel, to measure that lever
(benchmarks/decoder_levers.py, "weights") on whole decoder steps and on real speech before it was
built into the product (options.decoder_int8 = "channels", which onnx-int8-dynamic sets: probe a
bundle built with --set options.decoder_int8=blocks --set weights.granularity=group
--set weights.group_size=128).

    python benchmarks/probe_dynamic_decoder.py BUNDLE OUT [--levels 63]

The weights are not stored again: each graph computes them from the MatMulNBits codes with nodes
ONNX Runtime folds when it makes the session (as encoder.avx2.onnx does for the encoder):

    Cast codes [N, K/128, 128] to float32, less 128, times r = block scale / channel step
    Round, Cast to int8, Reshape [N, K], Transpose [K, N]
    DynamicQuantizeMatMul(x, those codes, the channel steps)

The channel steps (largest |weight| of each output channel / --levels) are computed here from the
bundle's codes and stored, N numbers a layer. --levels 63 keeps |code| <= 63, which AVX2's
uint8 x int8 kernel multiplies without saturating (backends.onnx_avx2); 127 needs VNNI.

Folding holds every stage's output until the session is made: four float32 and three int8
copies of each weight (19 bytes a weight) at the first load, before runtime.prepared keeps the
folded graph. DequantizeLinear would do the first three stages in one (8 bytes a weight), but
ONNX Runtime does not fold DequantizeLinear unless the session sets session.disable_quant_qdq
(it keeps them for its QDQ fusions): without it every step would dequantize every weight again
(whisper-small's shape: 70 against 11 ms a step). A product version would need that setting in
the decoder's session, or the codes made once on the device.
Both decoder.onnx and decoder.vnni.onnx are rewritten, and manifest.json's entries for them (a
probe is a bundle like any other: opened, it is verified).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeq.util import sha256_file

DECODERS = ("decoder.onnx", "decoder.vnni.onnx")
MS = "com.microsoft"


def _attributes(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _steps_and_ratios(codes: np.ndarray, scales: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Each output channel's step (its largest |weight| / levels), [N], and each block's scale in
    units of its channel's step, [N, K/block, 1], from MatMulNBits codes [N, K/block, block] and
    scales [N, K/block]."""
    n = codes.shape[0]
    largest = np.abs((codes.astype(np.float32) - 128) * scales[..., None]).reshape(n, -1).max(axis=1)
    step = (np.maximum(largest, 1e-30) / levels).astype(np.float32)
    return step, (scales / step[:, None])[..., None].astype(np.float32)


def rewrite(model: onnx.ModelProto, folder: Path, levels: int, made: dict) -> int:
    """Rewrite `model`'s 8-bit MatMulNBits in place (its weights read from `folder`); returns how many.
    `made` keeps each weight's steps and ratios for the next graph: the two decoder graphs read the
    same weights file."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    shared = [numpy_helper.from_array(np.array(128, np.float32), "probe_128")]
    nodes, done = [], 0
    for node in g.node:
        a = _attributes(node)
        if node.op_type != "MatMulNBits" or a.get("bits") != 8 or len(node.input) != 3:
            nodes.append(node)
            continue
        x, codes_name, scales_name = node.input
        k, n = a["K"], a["N"]
        if codes_name not in made:
            made[codes_name] = _steps_and_ratios(
                numpy_helper.to_array(inits[codes_name], base_dir=str(folder)),
                numpy_helper.to_array(inits[scales_name], base_dir=str(folder)).reshape(n, -1), levels)
        step, ratio = made[codes_name]
        p = f"{codes_name}_probe"
        g.initializer.extend([
            numpy_helper.from_array(ratio, f"{p}_ratio"),
            numpy_helper.from_array(step, f"{p}_step"),
            numpy_helper.from_array(np.array([n, k], np.int64), f"{p}_nk")])
        nodes += [
            helper.make_node("Cast", [codes_name], [f"{p}_f"], to=TensorProto.FLOAT),
            helper.make_node("Sub", [f"{p}_f", "probe_128"], [f"{p}_c"]),
            helper.make_node("Mul", [f"{p}_c", f"{p}_ratio"], [f"{p}_units"]),
            helper.make_node("Round", [f"{p}_units"], [f"{p}_round"]),
            helper.make_node("Cast", [f"{p}_round"], [f"{p}_q"], to=TensorProto.INT8),
            helper.make_node("Reshape", [f"{p}_q", f"{p}_nk"], [f"{p}_qnk"]),
            helper.make_node("Transpose", [f"{p}_qnk"], [f"{p}_qkn"], perm=[1, 0]),
            helper.make_node("DynamicQuantizeMatMul", [x, f"{p}_qkn", f"{p}_step"], list(node.output),
                             name=f"{node.name}_probe", domain=MS)]
        done += 1
    g.initializer.extend(shared)
    del g.node[:]
    g.node.extend(nodes)
    return done


def probe(bundle: Path, out: Path, levels: int) -> dict[str, int]:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for f in bundle.iterdir():  # copied: onnx refuses to read weights from a file with two links
        shutil.copy2(f, out / f.name)
    manifest = json.loads((out / "manifest.json").read_text())
    counts, made = {}, {}
    for name in DECODERS:
        if not (out / name).is_file():
            continue
        model = onnx.load(out / name, load_external_data=False)
        counts[name] = rewrite(model, out, levels, made)
        onnx.save(model, out / name)
        manifest["files"][name] = {"sha256": sha256_file(out / name), "size": (out / name).stat().st_size}
    manifest["size"]["bundle_bytes"] = sum(e["size"] for e in manifest["files"].values())
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--levels", type=int, default=63, choices=[63, 127])
    args = ap.parse_args()
    counts = probe(args.bundle, args.out, args.levels)
    if not any(counts.values()):
        raise SystemExit(f"{args.bundle}: no 8-bit MatMulNBits in its decoder graphs")
    print(", ".join(f"{name}: {c} MatMulNBits rewritten" for name, c in counts.items()))


if __name__ == "__main__":
    main()
