"""Peak training memory: an estimate made before anything is allocated, and a measurement.

Estimate (``estimate(plan, ...)``), in bytes, from the model plan and its shape table:

* parameters, their gradients (float32 master weights, whatever the precision) and the
  optimizer's state (AdamW: two moments per element; Muon: one momentum buffer), counted on
  the model built on the meta device (no memory);
* activations of one micro-batch: what autograd keeps between forward and backward, taken as
  every value of the shape table (each node's output, at graph level) plus the steps inside
  components that declare them (q/k/v, attention outputs, MLP hidden units, experts), at the
  precision's element size, less each component's last step (its output, already counted);
  a step declaring ``saved`` (the fifth element of a ``shape_steps`` tuple: the tensors of its
  shape that the forward keeps, e.g. what a scan's autograd function saves) counts that many
  times, or not at all with ``saved = 0``; plus the largest backward workspace a step
  declares (its sixth element: tensors of its shape that the component's backward allocates
  and frees, e.g. a chunked scan's recomputed states), once, since backward runs one
  component at a time;
  attention score matrices count only where soft-capping makes attention compute them
  explicitly (twice: capped scores and probabilities; torch's fused attention keeps none);
  a gated product keeps the activation too, a gated expert's hidden step four tensors;
* the loss: cross-entropy keeps float32 log-probabilities of the logits and, in backward,
  their gradient: two more ``B × T × vocab`` float32 tensors.

Measurement (``measure_peak``): when the run is over, one more forward and backward of a
micro-batch (with the optimizer state in place, and with accumulation the gradients too) runs
under ``torch.profiler`` with ``profile_memory=True`` (whose native start/stop log lines are
kept off the terminal at file-descriptor level, ``_profiler_log_silenced``); the allocator's
events, summed in time order, give the peak above what was live before (parameters, gradients,
optimizer state), which is added back. It runs after training because the profiler slows the
later steps of the model it profiled (by about 10 % on CPU, measured with bench/train.py). On
CUDA, ``torch.cuda.max_memory_allocated`` gives the same directly. Both count tensor memory
only (not the Python interpreter or torch's own code), which is what the estimate predicts.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from blockdsl.lower import module_attributes
from blockdsl.shapes import DTYPE_BYTES, shape_table


@dataclass
class MemoryEstimate:
    params: int
    gradients: int
    optimizer: int
    activations: int
    loss: int

    @property
    def total(self) -> int:
        return self.params + self.gradients + self.optimizer + self.activations + self.loss

    def as_dict(self) -> dict[str, int]:
        return {
            "params": self.params,
            "gradients": self.gradients,
            "optimizer": self.optimizer,
            "activations": self.activations,
            "loss": self.loss,
            "total": self.total,
        }


def estimate(plan: Any, batch: int, seq: int, precision: str, optim: Any) -> MemoryEstimate:
    """Peak bytes of a training step of ``plan`` on micro-batches of ``batch × seq``."""
    from blockdsl.model import build_model
    from blockdsl.train.optim import optimizer_state_bytes

    meta = build_model(plan.config, device=torch.device("meta"), registry=plan.registry)
    param_bytes = sum(p.numel() * p.element_size() for p in meta.parameters())
    table = shape_table(plan, batch=batch, seq=seq, depth=2, dtype=precision)
    inside = workspace = 0
    rows = table.rows
    for index, row in enumerate(rows):
        if row.kind != "step":
            continue
        workspace = max(workspace, row.workspace * math.prod(row.concrete))
        last = index + 1 == len(rows) or rows[index + 1].kind != "step"
        kept = row.saved - 1 if last and row.level == 1 else row.saved
        if kept <= 0:
            continue  # nothing kept: a last step is the output (counted at graph level)
        if row.what == "scores":
            # torch's fused attention keeps no score matrix; the explicit path (soft-capping)
            # keeps two (the capped scores and the probabilities)
            inside += 2 * math.prod(row.concrete) if _explicit_scores(plan, row.path) else 0
            continue
        inside += math.prod(row.concrete) * (_copies(plan, row) if row.saved == 1 else kept)
    activations = table.activation_bytes + (inside + workspace) * DTYPE_BYTES[precision]
    loss = 2 * batch * seq * plan.config.vocab * 4
    return MemoryEstimate(
        params=param_bytes,
        gradients=param_bytes,
        optimizer=optimizer_state_bytes(meta, optim),
        activations=activations,
        loss=loss,
    )


def _copies(plan: Any, row: Any) -> int:
    """Tensors autograd keeps per declared step: a gated product (``act*up``) keeps the
    activation and the product; a gated expert's hidden step stands for gate, up,
    activation and product."""
    if "*" in row.what:
        return 2
    if row.what == "expert hidden" and _call_args(plan, row.path).get("gated"):
        return 4
    return 1


def _explicit_scores(plan: Any, step_path: str) -> bool:
    """Whether the attention call that owns the step at ``step_path`` materialises its
    scores: a block in its ``scores`` slot (``softcap`` included:
    ``blockdsl.components.attention.attend``), or value heads of another width than the
    query heads, which torch's fused CPU kernel (like FlashAttention) does not take, so
    ``scaled_dot_product_attention`` falls back to its math path. On CUDA the memory-efficient
    kernel takes them; the estimate stays on the safe side there."""
    spec = _call_spec(plan, step_path)
    if spec is None:
        return False
    v_head_dim = spec.args.get("v_head_dim")
    return "scores" in spec.slots or (
        v_head_dim is not None and v_head_dim != spec.args.get("head_dim")
    )


def _call_args(plan: Any, step_path: str) -> dict[str, Any]:
    """The resolved arguments of the component call that owns ``step_path``."""
    spec = _call_spec(plan, step_path)
    return {} if spec is None else spec.args


def _call_spec(plan: Any, step_path: str) -> Any:
    """The module spec of the component call that owns ``step_path`` (None: not found)."""
    call = step_path.split("/")[0]
    block, _, attr = call.rpartition(".")
    graphs = {"embed": plan.embed, "head": plan.head}
    graphs.update({f"layers.{i}": graph for i, (_, graph) in enumerate(plan.layers)})
    graph = graphs.get(block)
    if graph is None:
        return None
    for key, name in module_attributes(graph).items():
        if name == attr:
            return graph.modules[key]
    return None


def available(device: torch.device) -> int | None:
    """Bytes free for this run: the GPU's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def live_bytes(*groups: Any) -> int:
    """Bytes of the distinct tensor storages in ``groups`` (tensors, lists, dicts of them)."""
    seen: dict[int, int] = {}

    def visit(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            value = value.to_local() if hasattr(value, "to_local") else value  # FSDP's DTensor
            storage = value.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)

    for group in groups:
        visit(group)
    return sum(seen.values())


def measure_peak(step: Callable[[], Any], device: torch.device, baseline: int) -> int:
    """Run ``step`` once and return the peak bytes of tensor memory while it ran
    (``baseline``: the bytes live before it, counted in on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _profiler_log_silenced():
        prof.start()
    try:
        step()
    finally:
        with _profiler_log_silenced():
            prof.stop()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        if event.device_type().name == "CPU":
            current += event.nbytes()
            peak = max(peak, current)
    return baseline + peak


#: Lines the profiler's native library (kineto) writes to stderr when it starts and stops
#: (``USDT:... SyncActivityProfilerHandler.cpp:52] profiler_start``, ``STAGE:...``); its
#: ``KINETO_LOG_LEVEL`` does not reach the USDT lines.
_PROFILER_LOG = re.compile(rb"^(USDT|STAGE|INFO|WARNING):[^\n]*\.cpp:\d+\][^\n]*\n?", re.M)


@contextlib.contextmanager
def _profiler_log_silenced() -> Iterator[None]:
    """Keep the profiler's native log lines off the terminal: while the profiler starts or
    stops, file descriptor 2 goes to a temporary file, and whatever else was written there
    meanwhile (another thread's message) is written back to the real stderr afterwards."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                capture.seek(0)
                rest = _PROFILER_LOG.sub(b"", capture.read())
                if rest:
                    os.write(2, rest)
    finally:
        os.close(saved)


__all__ = ["MemoryEstimate", "available", "estimate", "live_bytes", "measure_peak"]
