"""Distributed training on PyTorch's own engine: torchrun's launch, DDP or FSDP2, DCP checkpoints.

``torchrun --nproc_per_node=N -m blockdsl train ...`` runs the same training loop in N
processes. This module is what the loop needs for that, and nothing of it is home-made:

* the launch is read from the environment torchrun sets (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``); ``Group`` opens the process group (gloo on CPU, NCCL
  on CUDA bound to ``cuda:LOCAL_RANK``, with a timeout on every collective) and destroys it on
  every way out, errors included. One process (no torchrun, or ``WORLD_SIZE=1``) opens none and
  every collective below is the identity;
* parallelism is applied to the built model from outside (torchtitan's way): ``parallelize``
  wraps it in ``DistributedDataParallel`` or applies ``fully_shard`` (FSDP2) to each layer and
  then the root, on an explicit ``DeviceMesh`` of the run's device type (CPU runs stay on CPU),
  with a ``MixedPrecisionPolicy`` (bfloat16 compute, float32 gradient reduction) on CUDA when
  ``precision = "bfloat16"``; ``choose_strategy`` resolves ``strategy = "auto"`` from the
  memory estimate;
* checkpoints of a distributed run hold the model and the optimizer state sharded, written
  and read by ``torch.distributed.checkpoint`` through ``get_state_dict`` /
  ``set_state_dict``; DCP reshards on load, so a run saved by N ranks resumes on M ranks and
  under either strategy (``load_sharded`` works in a single process too).

A failing rank ends the job: torchrun sees its exit and stops the others, whose next
collective fails at once (gloo) or within ``[train] collective_timeout`` (NCCL); the CLI's
entry point is wrapped in torch's ``errors.record``, so the failing rank's traceback is in
torchrun's summary.
"""

from __future__ import annotations

import os
import pickle
import signal
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from blockdsl.errors import BlockDSLError, ConfigError

FAULT_ENV = "BLOCKDSL_FAULT"  # "RANK:STEP:raise|kill": fail on purpose (tests the failure path)

T = TypeVar("T")


# ==================================================================== the launch
@dataclass(frozen=True)
class Launch:
    """Where this process stands in the job (torchrun's environment; one process without)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def detect_launch(environ: Mapping[str, str] | None = None) -> Launch:
    """The launch torchrun describes in ``environ`` (default: ``os.environ``)."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return Launch()
    values = {}
    for key, name in (
        ("RANK", "rank"),
        ("WORLD_SIZE", "world_size"),
        ("LOCAL_RANK", "local_rank"),
        ("LOCAL_WORLD_SIZE", "local_world_size"),
    ):
        text = env.get(key, "0" if key != "LOCAL_WORLD_SIZE" else env.get("WORLD_SIZE", "1"))
        if not text.strip().isdigit():
            raise ConfigError(
                f"the environment variable {key}={text!r} is not a number",
                hint="launch with torchrun, which sets RANK, WORLD_SIZE and LOCAL_RANK",
            )
        values[name] = int(text)
    launch = Launch(**values)
    if not 0 <= launch.rank < launch.world_size or launch.local_rank >= launch.local_world_size:
        raise ConfigError(
            f"RANK {launch.rank} / LOCAL_RANK {launch.local_rank} are outside WORLD_SIZE "
            f"{launch.world_size} / LOCAL_WORLD_SIZE {launch.local_world_size}",
            hint="launch with torchrun, which sets them consistently",
        )
    return launch


# ==================================================================== the process group


def _attempt_store(rank: int, world: int, timeout: timedelta) -> dict[str, Any]:
    """The rendezvous store of this torchrun attempt, as ``init_process_group`` keywords.

    After an elastic restart (``--max-restarts``) the store torchrun hands the workers may
    still hold the dead attempt's keys, and gloo then connects to the dead ranks' addresses
    (connection refused, or a hang). Keys under a prefix per attempt
    (``TORCHELASTIC_RESTART_COUNT``) keep each attempt's set-up its own. Outside torchrun
    (no ``MASTER_ADDR``): torch's default ``env://`` set-up."""
    import torch.distributed as dist

    address, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not address or not port:
        return {}
    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        host_name=address,
        port=int(port),
        world_size=world,
        is_master=not agent_hosts and rank == 0,
        timeout=timeout,
        multi_tenant=not agent_hosts,
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    prefixed = dist.PrefixStore(f"blockdsl/attempt_{attempt}", store)
    return {"store": prefixed, "rank": rank, "world_size": world}


class Group:
    """The run's process group: ``with Group(launch, device, timeout) as group:``. Opens one
    for a distributed launch (unless the caller already did: then it is used and left open),
    and destroys what it opened on the way out, whatever the way. The collectives here are the
    loop's few: ``sum`` (losses), ``max`` (clock and stop signal), ``on_main`` (decisions rank
    0 takes for all), ``barrier``; with one process they return their input."""

    def __init__(self, launch: Launch, device: torch.device, timeout: float = 600.0) -> None:
        self.launch, self.device, self.timeout = launch, device, timeout
        self._opened = False
        self._mesh: Any = None

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def world(self) -> int:
        return self.launch.world_size

    @property
    def main(self) -> bool:
        return self.launch.rank == 0

    @property
    def distributed(self) -> bool:
        return self.launch.distributed

    @property
    def backend(self) -> str | None:
        if not self.distributed:
            return None
        return "nccl" if self.device.type == "cuda" else "gloo"

    def __enter__(self) -> Group:
        if not self.distributed:
            return self
        import torch.distributed as dist

        if not dist.is_available():
            raise ConfigError("this torch was built without torch.distributed")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if not dist.is_initialized():
            timeout = timedelta(seconds=self.timeout)
            store = _attempt_store(self.rank, self.world, timeout)
            if self.backend == "nccl":
                dist.init_process_group("nccl", timeout=timeout, device_id=self.device, **store)
            else:
                dist.init_process_group("gloo", timeout=timeout, **store)
            self._opened = True
        if dist.get_world_size() != self.world or dist.get_rank() != self.rank:
            raise ConfigError(
                f"the process group has {dist.get_world_size()} ranks (this one {dist.get_rank()}) "
                f"but the environment says WORLD_SIZE={self.world}, RANK={self.rank}"
            )
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._opened:
            import torch.distributed as dist

            self._opened = False
            if dist.is_initialized():
                dist.destroy_process_group()

    @property
    def mesh(self) -> Any:
        """A one-dimensional ``DeviceMesh`` over every rank, of the run's device type."""
        if self._mesh is None:
            from torch.distributed.device_mesh import init_device_mesh

            self._mesh = init_device_mesh(self.device.type, (self.world,))
        return self._mesh

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks (every rank gets the sum)."""
        if not self.distributed:
            return tensor
        import torch.distributed as dist

        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def max(self, *values: float) -> list[float]:
        """Each of ``values``, the largest over the ranks."""
        if not self.distributed:
            return list(values)
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def on_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on rank 0 alone, its result on every rank; a ``BlockDSLError`` it
        raises is raised on every rank (so all stop, not just rank 0)."""
        if not self.distributed:
            return fn()
        import torch.distributed as dist

        outcome: list[Any] = [None]
        if self.main:
            try:
                outcome[0] = (True, fn())
            except BlockDSLError as exc:
                outcome[0] = (False, exc)
        dist.broadcast_object_list(outcome, src=0)
        ok, value = outcome[0]
        if not ok:
            if not self.main:
                value.raised_on_rank0 = True  # the CLI lets rank 0 alone print it
            raise value
        return value


def inject_fault(rank: int, step: int) -> None:
    """Fail here when ``$BLOCKDSL_FAULT`` says so (``RANK:STEP:raise`` raises, ``RANK:STEP:kill``
    SIGKILLs the process): how the test suite and docs/distributed.md show a failing rank
    taking the job down. Only in torchrun's first attempt, so a restart (``--max-restarts``)
    gets past it."""
    spec = os.environ.get(FAULT_ENV)
    if not spec or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    at_rank, at_step, kind = spec.split(":")
    if int(at_rank) != rank or int(at_step) != step:
        return
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"fault injected by {FAULT_ENV}={spec} on rank {rank} at step {step}")


# ==================================================================== strategies
def choose_strategy(setting: str, needs: int, limit: int | None, world: int) -> str | None:
    """The strategy of a run: None for one process; ``setting`` unless it is ``"auto"``;
    ``auto``: DDP (every rank holds the whole model and its optimizer state) when the
    single-rank training estimate ``needs`` fits the per-rank ``limit``, else FSDP."""
    if world <= 1:
        return None
    if setting != "auto":
        return setting
    return "ddp" if limit is None or needs <= limit else "fsdp"


def per_rank_estimate(estimate: Any, strategy: str | None, world: int, model: nn.Module) -> Any:
    """The memory estimate of one rank: the single-process one, except under FSDP, where each
    rank keeps 1/world of the parameters, gradients and optimizer state, plus what it gathers
    whole: the root's parameters (embedding, head, layers sharing a weight; FSDP keeps them
    gathered between forward and backward) and two layers at a time (the running one and the
    prefetched next).
    ``model``: the model (its meta-device build will do)."""
    if strategy != "fsdp":
        return estimate
    every = _layers(model)
    layers = [every[index] for index in shardable_layers(model)]  # the units FSDP gathers
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    root = sum(_bytes(p) for p in model.parameters() if id(p) not in in_layers)
    sizes = sorted(sum(_bytes(p) for p in layer.parameters()) for layer in layers)
    gathered = root + sum(sizes[-2:])
    return replace(
        estimate,
        params=estimate.params // world + gathered,
        gradients=estimate.gradients // world + gathered,
        optimizer=estimate.optimizer // world,
    )


def _bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _layers(model: nn.Module) -> list[nn.Module]:
    """The model's layers (``model.layers``, or those of the ``LanguageModel`` a task wraps)."""
    for module in model.modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, nn.ModuleList):
            return list(layers)
    return []


def parallelize(model: nn.Module, strategy: str | None, group: Group, precision: str) -> nn.Module:
    """``model`` made data-parallel: the ``DistributedDataParallel`` wrapper to call, or
    ``model`` itself with ``fully_shard`` applied to each layer and then the root (FSDP2 works
    in place; a layer sharing weights with another part of the model, a ``##label``, is left
    to the root's group). None: ``model`` unchanged."""
    if strategy is None:
        return model
    device = group.device
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        # buffers (rotary tables, masks) are computed alike on every rank, never learned:
        # no broadcast of them before each forward
        with warnings.catch_warnings():
            # torch 2.13 deprecates broadcast_buffers; its replacement still syncs buffers at
            # init, which rank-local buffers must not be: keep the old switch, quietly
            warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated")
            return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy()
    if device.type == "cuda" and precision == "bfloat16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    layers = _layers(model)
    for index in shardable_layers(model):
        fully_shard(layers[index], mesh=group.mesh, mp_policy=policy)
    fully_shard(model, mesh=group.mesh, mp_policy=policy)
    return model


def shardable_layers(model: nn.Module) -> list[int]:
    """The indices of the layers FSDP can shard as units of their own: those sharing no
    weight with another layer or with the rest of the model (a ``##label``)."""
    layers = _layers(model)
    # who holds each parameter: a layer's index, or -1 for the rest of the model
    owners: dict[int, set[int]] = {}
    prefixes = {id(m): name for name, m in model.named_modules()}
    layer_names = {prefixes[id(layer)]: index for index, layer in enumerate(layers)}
    for name, param in model.named_parameters(remove_duplicate=False):
        holder = next((i for pre, i in layer_names.items() if name.startswith(pre + ".")), -1)
        owners.setdefault(id(param), set()).add(holder)
    return [
        index
        for index, layer in enumerate(layers)
        if all(owners[id(p)] == {index} for p in layer.parameters())
    ]


def gradient_sync(model: nn.Module, strategy: str | None, sync: bool) -> AbstractContextManager:
    """Around a micro-batch's backward: gradients are reduced across ranks only when ``sync``
    (the last micro-batch of an optimizer step), accumulated locally before it."""
    if strategy == "ddp" and not sync:
        return model.no_sync()
    if strategy == "fsdp":
        model.set_requires_gradient_sync(sync)
    return nullcontext()


def full_value(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor for a ``DTensor`` (the gradient norm of sharded parameters)."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


# ==================================================================== checkpoints
def save_sharded(path: Path, model: nn.Module, optimizers: Sequence[torch.optim.Optimizer]) -> None:
    """Write the model's and optimizers' state to ``path`` with torch.distributed.checkpoint
    (collective: every rank writes its shards; replicated DDP tensors are written once)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, list(optimizers))
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(path))


def load_sharded(path: Path, model: nn.Module, optimizers: Sequence[torch.optim.Optimizer]) -> None:
    """Read ``save_sharded``'s checkpoint into ``model`` and ``optimizers``, resharded to this
    run's ranks and strategy (any number of ranks, DDP, FSDP or a single process)."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    check_sharded_metadata(path)
    model_state, optim_state = get_state_dict(model, list(optimizers))
    state = {"model": model_state, "optim": optim_state}
    with warnings.catch_warnings():  # a single process reading a sharded checkpoint is meant
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(
        model,
        list(optimizers),
        model_state_dict=state["model"],
        optim_state_dict=state["optim"],
    )


# what a DCP ``.metadata`` pickle may name: DCP's own records, paths, sizes, dtypes, layouts
_METADATA_MODULES = ("torch.distributed.checkpoint.metadata",)
_METADATA_NAMES = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "PureWindowsPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Python's documented way of restricting what a pickle may construct."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = module in _METADATA_MODULES or (module, name) in _METADATA_NAMES
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            allowed = True
        if not allowed:
            raise pickle.UnpicklingError(f"{module}.{name} has no place in DCP metadata")
        return super().find_class(module, name)


def check_sharded_metadata(path: Path) -> None:
    """Refuse a sharded checkpoint whose ``.metadata`` (DCP reads it with ``pickle``) names
    anything but DCP's metadata records: the tensors themselves DCP reads with
    ``weights_only``, so this keeps loading a checkpoint from running code."""
    from blockdsl.checkpoint import CheckpointError

    metadata = Path(path) / ".metadata"
    try:
        with open(metadata, "rb") as f:
            _MetadataUnpickler(f).load()
    except FileNotFoundError:
        raise CheckpointError(f"{metadata} is missing") from None
    except Exception as exc:  # truncated or foreign pickles fail in many ways
        raise CheckpointError(
            f"{metadata} is not torch.distributed.checkpoint metadata: {exc}"
        ) from None


def full_optimizer_state(
    model: nn.Module, optimizers: Sequence[torch.optim.Optimizer]
) -> dict[str, Any]:
    """The optimizers' state keyed by parameter names (not by position), whole: what
    ``load_full_optimizer_state`` gives to the optimizers of a parallelized model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    return get_optimizer_state_dict(model, list(optimizers), options=options)


def load_full_optimizer_state(
    model: nn.Module, optimizers: Sequence[torch.optim.Optimizer], state: dict[str, Any]
) -> None:
    """Load ``full_optimizer_state``'s state (every rank holds it whole) into the optimizers
    of the parallelized ``model``: each rank keeps its shard under FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(model, list(optimizers), state, options=options)


def full_weights(model: nn.Module, group: Group) -> dict[str, torch.Tensor] | None:
    """The model's whole weights on rank 0's CPU (None on the other ranks); collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    return weights if group.main else None


__all__ = [
    "FAULT_ENV",
    "Group",
    "Launch",
    "check_sharded_metadata",
    "choose_strategy",
    "detect_launch",
    "full_optimizer_state",
    "full_value",
    "full_weights",
    "gradient_sync",
    "inject_fault",
    "load_full_optimizer_state",
    "load_sharded",
    "parallelize",
    "per_rank_estimate",
    "save_sharded",
    "shardable_layers",
]
