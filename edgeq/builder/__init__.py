"""The workstation side: load a source checkpoint, plan and quantize it, write a bundle.

Needs torch and transformers (`edgeq[torch]` and the backend's extra); never imported on a device.
"""
