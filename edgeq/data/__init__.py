"""Speech to measure on: dataset specs (LibriSpeech folders, manifests), the LibriSpeech download, WER.

Torch-free: `edgeq bench` runs these on the device.
"""
