"""edgeq: post-training quantization of Whisper into self-contained bundles for edge devices.

    import edgeq
    bundle = edgeq.build("quanto-int8-dynamic", model="openai/whisper-small", out="bundle/")
    text = edgeq.load("bundle/").transcribe("speech.flac").text

Heavy libraries (torch, transformers, quantization backends, onnxruntime) are imported only by
the functions that need them, so `import edgeq` stays fast and works with the runtime extra alone.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "build",
    "quantize",
    "load",
    "open_bundle",
    "load_recipe",
    "list_recipes",
    "Recipe",
    "Bundle",
    "Transcriber",
    "Transcription",
    "EdgeqError",
]

from edgeq.errors import EdgeqError


def __getattr__(name: str):
    # Lazy exports: `import edgeq` must not import torch (the ONNX runtime has none).
    if name == "build":
        from edgeq.builder import pipeline

        return pipeline.build
    if name == "quantize":
        from edgeq.builder import torch_writer

        return torch_writer.quantize
    if name in ("load", "Transcriber", "Transcription"):
        from edgeq.runtime import transcriber

        return getattr(transcriber, name)
    if name in ("open_bundle", "Bundle"):
        from edgeq.format import bundle

        return getattr(bundle, name)
    if name in ("load_recipe", "list_recipes", "Recipe"):
        from edgeq.spec import recipe

        return getattr(recipe, name)
    raise AttributeError(f"module 'edgeq' has no attribute {name!r}")
