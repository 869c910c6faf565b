"""Greedy Whisper decoding with a key/value cache, independent of the runtime.

Both runtimes (PyTorch and ONNX Runtime) implement the small `Engine` protocol
(`edgeq.spec.protocols`); this module
owns everything else — the task/language prompt, token suppression, language detection and the
stop rule — so every bundle, whatever its backend, is decoded by exactly the same rules and
comparisons between bundles measure the quantization, not the decoder. It also lets the bench
time the encoder and each decoder step separately, which `generate()` hides.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from edgeq.format import configs
from edgeq.spec.protocols import Engine


@dataclass(frozen=True)
class DecodeSettings:
    """Token ids and rules, read from the bundle's generation_config.json and config.json."""

    sot: int
    eot: int
    no_timestamps: int | None
    vocab_size: int
    max_new_tokens: int
    lang_ids: dict[str, int] = field(default_factory=dict)  # "en" -> 50259
    task_ids: dict[str, int] = field(default_factory=dict)
    suppress: tuple[int, ...] = ()
    begin_suppress: tuple[int, ...] = ()
    language: str | None = None  # None: detect (multilingual models only)
    task: str = "transcribe"

    @classmethod
    def from_configs(
        cls, generation: dict, config: dict, language: str | None = None, task: str = "transcribe",
        where: str = "",
    ) -> "DecodeSettings":
        """From the two JSON files' contents (`where`: the folder they came from, for errors)."""
        prefix = f"{where}/" if where else ""
        gen = configs.parse(configs.GenerationConfig, generation, f"{prefix}generation_config.json")
        cfg = configs.parse(configs.ModelConfig, config, f"{prefix}config.json")
        settings = cls(
            sot=gen.decoder_start_token_id,
            eot=gen.eos_token_id,
            no_timestamps=gen.no_timestamps_token_id,
            vocab_size=cfg.vocab_size,
            # Whisper's own sample length: half the text context (224 for 448 positions).
            max_new_tokens=cfg.max_target_positions // 2,
            lang_ids={k.strip("<|>"): v for k, v in (gen.lang_to_id or {}).items()},
            task_ids=dict(gen.task_to_id or {}),
            suppress=tuple(gen.suppress_tokens or ()),
            begin_suppress=tuple(gen.begin_suppress_tokens or ()),
        )
        return settings.with_options(language=language, task=task)

    def with_options(self, language: str | None = None, task: str | None = None) -> "DecodeSettings":
        if language is not None and self.lang_ids and language not in self.lang_ids:
            from edgeq.errors import EdgeqError

            raise EdgeqError(
                f"unknown language {language!r}; this model knows {', '.join(sorted(self.lang_ids))}"
            )
        if task is not None and self.task_ids and task not in self.task_ids:
            from edgeq.errors import EdgeqError

            raise EdgeqError(f"unknown task {task!r}; choose one of {', '.join(self.task_ids)}")
        return replace(
            self,
            language=language if self.lang_ids else None,
            task=task or self.task,
        )

    @property
    def multilingual(self) -> bool:
        return bool(self.lang_ids)

    def prompt(self, language: str | None) -> list[int]:
        ids = [self.sot]
        if self.multilingual:
            ids.append(self.lang_ids[language or "en"])
            ids.append(self.task_ids.get(self.task, self.sot + 1))
        if self.no_timestamps is not None:
            ids.append(int(self.no_timestamps))
        return ids


@dataclass
class DecodeResult:
    tokens: list[int]
    language: str | None
    encoder_s: float
    decode_s: float
    steps: int  # decoder calls, the prompt included
    truncated: bool  # stopped at max_new_tokens without an end-of-text token


class GreedyDecoder:
    def __init__(self, settings: DecodeSettings):
        self.settings = settings
        # Without timestamps no special token (ids above end-of-text) may ever be produced.
        mask = np.zeros(settings.vocab_size, dtype=bool)
        mask[settings.eot + 1 :] = True
        mask[[t for t in settings.suppress if 0 <= t < settings.vocab_size]] = True
        self._suppress = mask
        self._begin = np.array([t for t in settings.begin_suppress if t < settings.vocab_size], dtype=np.int64)
        self._lang_codes = list(settings.lang_ids)
        self._lang_token_ids = np.array(list(settings.lang_ids.values()), dtype=np.int64)

    def detect_language(self, engine: Engine, encoder_state: Any) -> str:
        logits, _ = engine.step(engine.start(encoder_state), [self.settings.sot])
        return self._lang_codes[int(np.argmax(logits[self._lang_token_ids]))]

    def decode(self, engine: Engine, features: np.ndarray) -> DecodeResult:
        s = self.settings
        t0 = time.perf_counter()
        encoder_state = engine.encode(features)
        t1 = time.perf_counter()
        language = s.language
        steps = 0
        if s.multilingual and language is None:
            language = self.detect_language(engine, encoder_state)
            steps += 1
        state = engine.start(encoder_state)
        logits, state = engine.step(state, s.prompt(language))
        steps += 1
        out: list[int] = []
        truncated = True
        for i in range(s.max_new_tokens):
            logits = np.where(self._suppress, -np.inf, logits)
            if i == 0 and self._begin.size:
                logits[self._begin] = -np.inf
            token = int(np.argmax(logits))
            if token == s.eot:
                truncated = False
                break
            out.append(token)
            if i + 1 == s.max_new_tokens:
                break
            logits, state = engine.step(state, [token])
            steps += 1
        t2 = time.perf_counter()
        return DecodeResult(out, language, t1 - t0, t2 - t1, steps, truncated)
