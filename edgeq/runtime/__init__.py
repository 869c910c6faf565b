"""What runs on the device without PyTorch: audio -> features -> decoder -> text, and the ONNX engine.

This folder is what `pip install 'edgeq[runtime]'` runs. It imports numpy, soundfile, soxr and
(when an ONNX bundle is loaded) onnxruntime, never torch, transformers, onnx or the
build side (tests/test_architecture.py reads every import and fails if one appears). Torch bundles
are run by `edgeq.torch_runtime`, which `transcriber.load` imports by name from the catalogue.
"""
