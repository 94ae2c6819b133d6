"""Synthetic tasks that predict how an architecture scales, usable wherever ``--data`` is:
``task:NAME[,key=value...]`` (docs/tasks.md).

>>> from blockdsl.tasks import Task
>>> task = Task("task:mqar,vocab=256,seq=64,pairs=4,train=64,test=16", seed=0)
>>> inputs, targets = task.batch(step=0, batch_size=8)
>>> tuple(inputs.shape), int((targets != -100).sum(dim=1)[0])
((8, 64), 4)
"""

from blockdsl.tasks.metrics import IGNORE_INDEX, macro_accuracy, per_example_accuracy
from blockdsl.tasks.registry import TASKS, Param, TaskDef
from blockdsl.tasks.spec import PREFIX, TaskError, TaskSpec, is_task, parse_task
from blockdsl.tasks.task import Task


def difficulties(name: str) -> list[str]:
    """MAD's settings of task ``name`` (``make_benchmark_mad_configs``): the defaults, then
    each difficulty change of one parameter, as task texts."""
    if name not in TASKS:
        from blockdsl.errors import did_you_mean

        raise TaskError(f"unknown task '{name}'", hint=did_you_mean(name, TASKS))
    base = TaskSpec(TASKS[name], TASKS[name].defaults())
    out = [base.text()]
    for key, values in TASKS[name].difficulties.items():
        for value in values:
            out.append(TaskSpec(TASKS[name], {**base.params, key: value}).text())
    return out


__all__ = [
    "IGNORE_INDEX",
    "PREFIX",
    "TASKS",
    "Param",
    "Task",
    "TaskDef",
    "TaskError",
    "TaskSpec",
    "difficulties",
    "is_task",
    "macro_accuracy",
    "parse_task",
    "per_example_accuracy",
]
