"""The bundle on disk: the folder, its manifest and the ONNX layout contract.

Torch-free (tests/test_architecture.py enforces it): the writer on the workstation and the reader
on the device use these same definitions, so the format is written down once.
"""
