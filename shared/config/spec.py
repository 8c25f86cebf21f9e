"""How a setting is declared, read and documented: each is one dataclass field made by
`setting(...)` (variable, default, bounds or choices, one line of text), and everything else
comes from that declaration: `read` parses the environment into the dataclass, naming the
variable in the `InvalidSetting` it raises for a bad value, and `markdown_table` writes the
table of docs/configuration.md. Knows nothing of Settle's own settings."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from shared.errors import InvalidSetting

T = TypeVar("T")
D = TypeVar("D", bound=Hashable)

#: The key of a field's metadata that holds its `Spec`.
SPEC = "setting"

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Spec:
    """What one setting's declaration says besides its field's name, type and default."""

    env: str
    doc: str
    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    below: float | None = None
    choices: tuple[str, ...] = ()
    min_length: int = 0
    #: Further vetting of the raw value; raises `InvalidSetting`.
    check: Callable[[str], object] | None = None
    #: The default as the docs state it, where the value alone would mislead (a default
    #: derived from other settings, or made when the process starts).
    shown: str | None = None
    #: What a text setting holds, for the docs table ("URL", "directory").
    form: str = "text"

    def bounds(self) -> str:
        """The allowed range in words ("at least 1", "between 0 and 1"), "" when unbounded."""
        low = self.at_least if self.at_least is not None else self.above
        high = self.at_most if self.at_most is not None else self.below
        if low is not None and high is not None:
            exclusive = self.above is not None and self.below is not None
            return f"between {low} and {high}" + (" (exclusive)" if exclusive else "")
        if self.above == 0:
            return "positive"
        if self.above is not None:
            return f"above {self.above}"
        if self.at_least is not None:
            return f"at least {self.at_least}"
        if self.below is not None:
            return f"below {self.below}"
        if self.at_most is not None:
            return f"at most {self.at_most}"
        return ""

    def within(self, value: float) -> bool:
        return not (
            (self.at_least is not None and value < self.at_least)
            or (self.above is not None and value <= self.above)
            or (self.at_most is not None and value > self.at_most)
            or (self.below is not None and value >= self.below)
        )


def setting(
    env: str,
    default: T,
    doc: str,
    *,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    below: float | None = None,
    choices: tuple[str, ...] = (),
    min_length: int = 0,
    check: Callable[[str], object] | None = None,
    shown: str | None = None,
    form: str = "text",
    factory: Callable[[], T] | None = None,
) -> T:
    """Declare a setting: a dataclass field read from the variable `env`, `default` when
    unset or empty (`factory()` instead, when given: a default made per instance), and
    described by `doc` in the docs table. Its type is the field's annotation: `str`, `int`,
    `float` or `bool`, or one of them `| None` for a setting that may stay unset."""
    spec = Spec(env, doc, at_least, above, at_most, below, choices, min_length, check, shown, form)
    if factory is not None:
        field: Any = dataclasses.field(default_factory=factory, metadata={SPEC: spec})
    else:
        field = dataclasses.field(default=default, metadata={SPEC: spec})
    return typing.cast(T, field)


@functools.cache
def declared(cls: type) -> tuple[tuple[dataclasses.Field[Any], Spec, type], ...]:
    """`cls`'s settings in declaration order: each field, its `Spec` and its value type
    (`int` for `int | None`)."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        if SPEC in f.metadata:
            found.append((f, f.metadata[SPEC], _value_type(hints[f.name])))
    return tuple(found)


def _value_type(hint: Any) -> type:
    if isinstance(hint, types.UnionType):
        (kind,) = (arg for arg in typing.get_args(hint) if arg is not type(None))
        return typing.cast(type, kind)
    return typing.cast(type, hint)


def read(cls: type[D], env: Mapping[str, str]) -> D:
    """An instance of the settings dataclass `cls` from `env`: each declared variable that is
    set parsed by its type and checked against its declaration, the rest left at their
    defaults. Raises `InvalidSetting` naming the variable when a value does not parse."""
    values = {}
    for f, spec, kind in declared(cls):
        raw = env.get(spec.env, "").strip()
        if raw:
            values[f.name] = parse(spec, kind, raw)
    return cls(**values)


def read_one(cls: type, name: str, env: Mapping[str, str]) -> object:
    """The setting of `cls` whose field is `name`, from `env` as `read` would give it.
    Raises `InvalidSetting` naming the variable when its value does not parse."""
    for f, spec, kind in declared(cls):
        if f.name == name:
            raw = env.get(spec.env, "").strip()
            if raw:
                return parse(spec, kind, raw)
            return (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
    raise KeyError(name)


def parse(spec: Spec, kind: type, raw: str) -> object:
    """`raw` (not empty) as a value of `kind` that fits `spec`, or `InvalidSetting`."""
    name = spec.env
    if kind is bool:
        if raw.lower() in TRUE:
            return True
        if raw.lower() in FALSE:
            return False
        raise InvalidSetting(f"{name}={raw!r} is not a boolean (true or false)")
    if kind is int or kind is float:
        try:
            number: float = kind(raw)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise InvalidSetting(f"{name}={raw!r} is not {what}") from None
        if not spec.within(number):
            raise InvalidSetting(f"{name}={number} must be {spec.bounds()}")
        return number
    if spec.choices:
        raw = raw.lower()
        if raw not in spec.choices:
            raise InvalidSetting(f"{name}={raw!r} must be one of {', '.join(spec.choices)}")
    if len(raw) < spec.min_length:
        # The value is not repeated: a setting with a minimum length is a secret.
        raise InvalidSetting(f"{name} must be at least {spec.min_length} characters long")
    if spec.check is not None:
        spec.check(raw)
    return raw


def accepts(spec: Spec, kind: type) -> str:
    """What a setting accepts, in words, for the docs table."""
    if kind is bool:
        return "`true` or `false`"
    if spec.choices:
        *first, last = (f"`{choice}`" for choice in spec.choices)
        return f"{', '.join(first)} or {last}" if first else last
    if kind is int or kind is float:
        what = "integer" if kind is int else "number"
        return f"{what}, {spec.bounds()}" if spec.bounds() else what
    if spec.min_length:
        return f"{spec.form}, at least {spec.min_length} characters"
    return spec.form


def shown_default(spec: Spec, field: dataclasses.Field[Any]) -> str:
    """The default as the docs table states it."""
    if spec.shown is not None:
        return spec.shown
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


#: The first line of the docs table; `replace_table` finds the table by it.
HEADER = "| variable | default | accepts | meaning |"


def markdown_table(cls: type) -> str:
    """The docs table of `cls`'s settings: one row per declaration, in declaration order."""
    rows = [HEADER, "| --- | --- | --- | --- |"]
    for f, spec, kind in declared(cls):
        cells = (f"`{spec.env}`", shown_default(spec, f), accepts(spec, kind), spec.doc)
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def replace_table(text: str, table: str) -> str:
    """`text` (a markdown page) with the settings table in it, the lines from `HEADER` to
    the first line that is not a table row, replaced by `table`. Raises `ValueError` when
    the page has no such table."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip("\n") == HEADER]
    if len(starts) != 1:
        raise ValueError(f"expected one line {HEADER!r}, found {len(starts)}")
    start = end = starts[0]
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "".join(lines[:start]) + table + "".join(lines[end:])
