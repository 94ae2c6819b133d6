"""``[train] compile``: eager, ``torch.compile``, or ``"auto"``: compile only when it pays back.

``"auto"`` runs the first two steps eagerly and times the second (the first warms up). It then
predicts what compiling would save over the rest of the run, ``remaining steps × eager step
time × speedup``, and compiles when that exceeds the compile time. Compile time and speedup are
taken from earlier measurements of the same model, batch shape, device and torch version (a
small JSON cache, ``$BLOCKDSL_CACHE_DIR`` or ``~/.cache/blockdsl``), else from the priors below
(measured with ``bench/step.py`` on a 2-core CPU: 32 s to compile the llama preset, 17 % faster
steps). After compiling it measures both: the first compiled step's extra time is the compile
time, the next step the compiled step time; if compiled steps are not faster than eager ones
(sparse MoE under some torch versions) it goes back to eager for the rest of the run. Every
decision and its figures go to the run's log and ``summary.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blockdsl._io import write_atomic

PRIOR_COMPILE_SECONDS = {"cpu": 30.0, "cuda": 60.0}
PRIOR_SPEEDUP = 0.15  # fraction of an eager step's time that compiling saves


class CompileChoice:
    """Which forward the loop calls: the model, or ``torch.compile(model)``."""

    def __init__(
        self,
        model: nn.Module,
        settings: Any,
        horizon: int | None,
        start_step: int,
        decision: str | None,
        log: Callable[[str], None],
    ) -> None:
        self.model, self.settings, self.horizon, self.log = model, settings, horizon, log
        self.start = start_step
        self.figures: dict[str, Any] = {"setting": settings.compile}
        self.decision = decision
        self.compiled: Any = None
        self._eager_times: list[float] = []
        self._compiled_times: list[float] = []
        if decision is None and settings.compile is not True and settings.compile != "auto":
            self.decision = "eager"
        if decision is None and settings.compile is True:
            self.decision = "compiled"
        self.forward: Callable[..., Any] = self.model
        if self.decision == "compiled":
            self.forward = self._compile()

    def _compile(self) -> Any:
        if self.compiled is None:
            self.compiled = torch.compile(self.model)
        return self.compiled

    def observe(self, step: int, seconds: float) -> None:
        """Called after each step with its wall time."""
        if self.decision is not None or self.settings.compile != "auto":
            return
        if self.compiled is None:
            self._eager_times.append(seconds)
            if len(self._eager_times) >= 2:
                self._decide(step)
            return
        self._compiled_times.append(seconds)
        if len(self._compiled_times) >= 2:
            self._judge()

    def _decide(self, step: int) -> None:
        eager = self._eager_times[-1]
        remaining = self._remaining(step, eager)
        cached = _cache_get(self._key())
        device = next(self.model.parameters()).device.type
        compile_s = cached.get("compile_s", PRIOR_COMPILE_SECONDS.get(device, 60.0))
        speedup = cached.get("speedup", PRIOR_SPEEDUP)
        gain = remaining * eager * speedup
        source = "measured before" if cached else "prior"
        self.figures.update(
            eager_step_s=eager,
            remaining_steps=remaining,
            expected_compile_s=compile_s,
            expected_speedup=speedup,
            expected_gain_s=gain,
            estimates_from=source,
        )
        if speedup <= 0 or gain <= compile_s:
            self.decision = "eager"
            self.log(
                f"compile=auto: eager ({remaining} steps × {eager:.3f} s × {speedup:.0%} saved "
                f"= {gain:.1f} s < {compile_s:.1f} s to compile, {source})"
            )
            return
        self.log(
            f"compile=auto: compiling ({remaining} steps × {eager:.3f} s × {speedup:.0%} saved "
            f"= {gain:.1f} s > {compile_s:.1f} s to compile, {source})"
        )
        self.forward = self._compile()

    def _judge(self) -> None:
        eager = self._eager_times[-1]
        first, compiled = self._compiled_times
        compile_s = max(0.0, first - compiled)
        speedup = 1.0 - compiled / eager
        _cache_put(self._key(), {"compile_s": compile_s, "speedup": speedup})
        self.figures.update(measured_compile_s=compile_s, compiled_step_s=compiled)
        if compiled >= eager:
            self.decision = "eager"
            self.forward = self.model
            self.log(
                f"compile=auto: compiled steps take {compiled:.3f} s against {eager:.3f} s "
                f"eager (compile took {compile_s:.1f} s): back to eager"
            )
        else:
            self.decision = "compiled"
            self.log(
                f"compile=auto: compiled in {compile_s:.1f} s; steps {eager:.3f} s → "
                f"{compiled:.3f} s ({speedup:.0%} faster)"
            )

    def _remaining(self, step: int, eager: float) -> int:
        if self.horizon is not None:
            return max(0, self.horizon - (step + 1))
        elapsed = sum(self._eager_times)
        return max(0, int((self.settings.time - elapsed) / max(eager, 1e-9)))

    def _key(self) -> str:
        config = getattr(self.model, "config", None)
        text = config.to_toml() if config is not None else repr(self.model)
        device = next(self.model.parameters()).device.type
        shape = (self.settings.batch_size, self.settings.seq_len, self.settings.precision)
        payload = f"{text}|{shape}|{device}|{torch.__version__}"
        return hashlib.sha256(payload.encode()).hexdigest()[:20]

    def summary(self) -> dict[str, Any]:
        return {**self.figures, "decision": self.decision or "eager"}


def _cache_path() -> Path:
    root = os.environ.get("BLOCKDSL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "blockdsl"
    )
    return Path(root) / "compile_times.json"


def _cache_get(key: str) -> dict[str, float]:
    try:
        return json.loads(_cache_path().read_text()).get(key, {})
    except (OSError, ValueError, AttributeError):
        return {}


def _cache_put(key: str, value: dict[str, float]) -> None:
    path = _cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        data[key] = value
        write_atomic(path, json.dumps(data, indent=1))
    except OSError:
        pass  # a read-only home: decide from the priors next time


__all__ = ["PRIOR_COMPILE_SECONDS", "PRIOR_SPEEDUP", "CompileChoice"]
