"""Options stated once: a command lists each option of a library call as an ``Option`` (its flag,
metavar and help line); the option's type and default come from the library function's
signature, and ``options_from`` turns the parsed flags back into that function's keyword
arguments (``library_fn(**options_from(args, OPTIONS))``). The flag, the hand copy into the
call and the signature used to be three statements of every option; now the table and the
signature are the only two, and neither repeats the other.

An option the user did not give is not passed at all, so the library's default applies (and
``--help`` shows that default, read from the signature)."""

from __future__ import annotations

import argparse
import importlib
import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from blockdsl.errors import ConfigError


class _Unset:
    """The value of an option the user did not give (the library's default applies)."""

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:  # an absent switch reads as off: ``if args.quiet``
        return False


UNSET: Any = _Unset()


@dataclass(frozen=True)
class Option:
    """One command-line option of a library call.

    ``flag`` (``--max-memory``) names the keyword ``param`` of ``function`` (the function, or
    ``"module:name"`` so that the library is imported only when the command runs; default: the flag
    without dashes, ``-`` read as ``_``; for ``--no-X``, ``X``). A boolean parameter becomes a
    switch giving the opposite of its default (``--no-plot``: ``plot=False``), or ``switch``
    when set (``--quiet``: ``progress=False``). ``parse`` turns the text into the library's
    value when the parameter's type alone does not say how (comma lists); it may raise a
    ``BlockDSLError``, reported like any user error. ``repeat`` collects every use into a list.
    ``default`` only where the command's default differs from the library's (or the library
    has none)."""

    flag: str
    help: str
    function: Callable[..., Any] | str
    metavar: str | None = None
    param: str | None = None
    parse: Callable[[str], Any] | None = None
    switch: Any = UNSET
    repeat: bool = False
    default: Any = UNSET
    choices: Sequence[str] | None = None
    aliases: tuple[str, ...] = ()
    required: bool = False

    @property
    def keyword(self) -> str:
        if self.param is not None:
            return self.param
        name = self.flag.lstrip("-")
        return name.removeprefix("no-").replace("-", "_")

    @property
    def dest(self) -> str:
        """The attribute of the parsed namespace: the flag's own name (``no_plot``)."""
        return self.flag.lstrip("-").replace("-", "_")

    def parameter(self) -> inspect.Parameter:
        function = library_function(self.function)
        try:
            return inspect.signature(function).parameters[self.keyword]
        except KeyError:
            raise TypeError(
                f"{self.flag}: {function.__qualname__} has no parameter '{self.keyword}'"
            ) from None


def library_function(function: Callable[..., Any] | str) -> Callable[..., Any]:
    """``function`` itself, or the function named ``"module:name"`` (imported now)."""
    if not isinstance(function, str):
        return function
    module, _, path = function.partition(":")
    found: Any = importlib.import_module(module)
    for name in path.split("."):  # "module:Class.method"
        found = getattr(found, name)
    return found


def with_defaults(function: Callable[..., Any] | str, keywords: dict[str, Any]) -> dict[str, Any]:
    """``keywords`` completed with ``function``'s defaults: the values the call will use."""
    parameters = inspect.signature(library_function(function)).parameters
    values = {n: p.default for n, p in parameters.items() if p.default is not p.empty}
    return {**values, **keywords}


def _scalar_type(annotation: Any) -> type | None:
    """``int`` for ``int`` or ``int | None`` (also as the string annotations of modules with
    ``from __future__ import annotations``); None for anything else."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    if not isinstance(annotation, str) and not text:
        text = str(annotation)
    parts = {part.strip() for part in text.split("|")} - {"None"}
    for kind in (bool, int, float, str):
        if parts == {kind.__name__}:
            return kind
    return None


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def add_options(parser: argparse.ArgumentParser | Any, options: Iterable[Option]) -> None:
    """Add each option's flag to ``parser`` (an argument parser or group), its type read from
    the library's signature and its help ending with the library's default."""
    for option in options:
        parameter = option.parameter()
        library_default = parameter.default
        kind = _scalar_type(parameter.annotation)
        shown_default = option.default if option.default is not UNSET else library_default
        help_text = option.help
        empty = isinstance(shown_default, (list, tuple)) and not shown_default
        if (
            shown_default not in (inspect.Parameter.empty, None, UNSET)
            and kind is not bool
            and not empty
        ):
            help_text += f" (default: {_shown(shown_default)})"
        flags = [option.flag, *option.aliases]
        common: dict[str, Any] = {"dest": option.dest, "help": help_text}
        if option.required:
            common["required"] = True
        else:
            common["default"] = UNSET
        if option.switch is not UNSET or (kind is bool and option.parse is None):
            parser.add_argument(*flags, action="store_true", **common)
            continue
        if option.metavar:
            common["metavar"] = option.metavar
        if option.choices:
            common["choices"] = list(option.choices)
        if option.parse is None and kind in (int, float):
            common["type"] = kind
        if option.repeat:  # append needs None (or a list) to start from: None is "not given"
            common["action"] = "append"
            common["default"] = None
        parser.add_argument(*flags, **common)


def options_from(args: argparse.Namespace, options: Iterable[Option]) -> dict[str, Any]:
    """The keyword arguments of the library call: every option the user gave, converted."""
    keywords: dict[str, Any] = {}
    for option in options:
        value = getattr(args, option.dest, UNSET)
        if value is UNSET or value is None:
            if option.default is not UNSET:
                keywords[option.keyword] = option.default
            continue
        if option.switch is not UNSET:
            value = option.switch if value else UNSET
        elif value is True and _scalar_type(option.parameter().annotation) is bool:
            # a switch: --no-X sets False where the library defaults to True, else True
            value = option.parameter().default is not True
        elif option.parse is not None:
            value = [option.parse(v) for v in value] if option.repeat else option.parse(value)
        if value is not UNSET:
            keywords[option.keyword] = value
    return keywords


def given(args: argparse.Namespace, dest: str, fallback: Any = None) -> Any:
    """An option's parsed value, or ``fallback`` when the user did not give it."""
    value = getattr(args, dest, UNSET)
    return fallback if value is UNSET else value


def comma_list(kind: type, flag: str) -> Callable[[str], list[Any]]:
    """A parser of ``a,b,c`` into a list of ``kind`` (numbers: ``1e3`` reads as an int)."""

    def parse(text: str) -> list[Any]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if kind is str:
            return items
        try:
            return [int(float(x)) if kind is int else kind(x) for x in items]
        except (ValueError, OverflowError):  # int(float("inf")) overflows
            raise ConfigError(f"{flag} expects comma-separated numbers, got '{text}'") from None

    return parse


def whole_number(flag: str) -> Callable[[str], int | float]:
    """A parser of a count written as a float (``2e6``) into an int; a value that is not a
    whole number (``0.5``, ``inf``, ``nan``) is passed on for the library to refuse by name."""

    def parse(text: str) -> int | float:
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{flag} expects a number, got '{text}'") from None
        return int(value) if value.is_integer() else value

    return parse
