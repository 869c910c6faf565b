"""The interfaces behind the catalogue's module names, written once as `typing.Protocol`.

Modules implement them (a module object satisfies a protocol structurally), so the builder and
the loader call one entry point whatever the library. Torch-free: model and tensor arguments are
typed `Any` here; the torch-side modules document their concrete types.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args, runtime_checkable

if TYPE_CHECKING:  # annotations only: the CLI imports SPINNING from here without numpy
    import numpy as np

# progress(stage, done, total): the CLI draws it; the library never prints.
Progress = Callable[[str, int, int], None]

# Whether a runtime's idle intra-op threads spin waiting for the next operator: "off" (they sleep)
# or "decoder" (the decoder's spin; the encoder's never do). Runtimes without the choice ignore it.
Spinning = Literal["off", "decoder"]
SPINNING: tuple[str, ...] = get_args(Spinning)


@runtime_checkable
class TorchBackend(Protocol):
    """A quantization library for torch-runtime bundles (floating, torch_ao, quanto, hqq, bnb)."""

    def quantize(self, model: Any, recipe: Any, plan: dict[str, Any], calibration: Any) -> None:
        """Replace the planned Linear layers of a float model in place (plan: name -> WeightSpec)."""

    def export(self, model: Any, recipe: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """The state to save: plain tensors for safetensors and JSON-able metadata to rebuild the
        quantized modules (`meta["layers"]` names them; their tensors are "<module>.<tensor>")."""

    def restore(self, model: Any, tensors: dict[str, Any], meta: dict[str, Any], recipe: Any,
                device: Any) -> None:
        """Rebuild the quantized modules from `tensors` on `device`, in a skeleton built on the
        meta device whose float modules the caller has already loaded."""


@runtime_checkable
class BundleWriter(Protocol):
    """Writes a runtime's model files into a bundle's staging folder (RuntimeSpec.writer)."""

    def write(self, model: Any, recipe: Any, calibration: Any, folder: Path, progress: Progress) -> None:
        """Quantize/export the float `model` with `recipe` and write the weight files to `folder`."""


class Engine(Protocol):
    """What a runtime provides to the decoder: run the encoder once, then the decoder step by step."""

    variable_window: bool
    """encode() also takes windows shorter than 3000 frames (any even length): see
    DecodeOptions.encoder_window."""

    def encode(self, features: np.ndarray) -> Any:
        """features: float32 [n_mels, 3000] (or shorter, when variable_window) -> opaque encoder state."""

    def start(self, encoder_state: Any) -> Any:
        """A fresh decoder state (empty self-attention cache) for `encoder_state`."""

    def step(self, state: Any, tokens: list[int]) -> tuple[np.ndarray, Any]:
        """Feed `tokens`, return the float32 logits of the last position [vocab] and the new state."""

    def fork(self, state: Any) -> Any:
        """An independent copy of a decoder state: beam search and sampling branch from one prompt,
        and stepping one branch must not change another."""


@runtime_checkable
class EngineModule(Protocol):
    """Loads a bundle of its runtime into an `Engine` (RuntimeSpec.engine)."""

    def load_engine(self, bundle: Any, device: str = "cpu", threads: int | None = None,
                    spinning: Spinning = "off") -> Engine:
        """The engine for `bundle` (a verified `edgeq.format.bundle.Bundle`) on `device`."""
