"""Runtimes that execute a bundle: `torch_engine` (PyTorch) and `onnx_engine` (ONNX Runtime).

Importing this package imports neither; each engine module is imported only when a bundle of its
runtime is loaded, so an ONNX bundle never pulls in torch.
"""
