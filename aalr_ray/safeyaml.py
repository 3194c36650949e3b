"""Reading a YAML file someone else wrote, with bounded time and memory (standard library + yaml).

``yaml.safe_load`` builds only plain data, but a small file can still make it
use gigabytes (nested aliases: "billion laughs"), recurse until Python gives
up (deep nesting), or silently keep the last of two equal keys. :func:`load_file`
is ``safe_load`` with limits, and every failure is one :class:`YamlRefused`
line:

- the file is read only up to ``MAX_BYTES`` (+1 byte to tell it is larger),
  must be a regular file and UTF-8 text;
- anchors and aliases (``&a`` / ``*a``, so also ``<<: *a`` merges) are refused:
  nothing expands beyond the text;
- at most ``MAX_DEPTH`` nested collections and ``MAX_NODES`` values;
- a key given twice in one mapping is refused, naming the key and both lines;
- an integer longer than Python's ``int()`` takes is refused, naming its line.

:class:`SafeLoader` (a ``yaml.SafeLoader``) does all of it in pure Python.
With libyaml, :func:`load_text` checks the limits on libyaml's event stream
first and then lets libyaml build the document, about 30 times faster; the
result is ``yaml.safe_load``'s either way. A file at the limits takes well
under a second and a few MB.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import yaml

__all__ = ["YamlRefused", "SafeLoader", "load_text", "read_text", "load_file", "MAX_BYTES", "MAX_DEPTH",
           "MAX_NODES"]

MAX_BYTES = 1_000_000  # a grid file is a few hundred bytes; jobs/ has none over 2 kB
MAX_DEPTH = 50  # nested mappings/sequences
MAX_NODES = 20_000  # scalars, sequences and mappings in the document (about 15 MB of Python parser objects)
MESSAGE_CHARS = 200  # longest quoted piece of the file in a message


class YamlRefused(ValueError):
    """A file that is not acceptable YAML; the message is one line (without the file name)."""


def _line(mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"


def _short_text(text: str) -> str:
    return text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS] + "..."


def _short(value) -> str:
    return _short_text(repr(value))


class _Limits:
    """The checks on each node's start event, shared by the Python loader and the libyaml pre-scan."""

    def __init__(self):
        self.depth = 0
        self.nodes = 0

    def start(self, event) -> bool:
        """Check a node's first event; True if it opens a collection (the caller calls :meth:`end`)."""
        if isinstance(event, yaml.AliasEvent):
            raise YamlRefused(f"aliases are not allowed (*{_short_text(event.anchor)} at "
                              f"{_line(event.start_mark)}); write the value out")
        if getattr(event, "anchor", None) is not None:
            raise YamlRefused(f"anchors are not allowed (&{_short_text(event.anchor)} at "
                              f"{_line(event.start_mark)}); write the value out")
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise YamlRefused(f"more than {MAX_NODES} values (at {_line(event.start_mark)})")
        if not isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            return False
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise YamlRefused(f"nested deeper than {MAX_DEPTH} levels (at {_line(event.start_mark)})")
        return True

    def end(self) -> None:
        self.depth -= 1


class _Checked:
    """Constructor mix-in: a key given twice in one mapping is an error, not "last wins"; an
    integer too long for ``int()`` is an error naming its line."""

    def construct_yaml_int(self, node):
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # Python's limit on int() of a long string of digits
            raise YamlRefused(f"an integer of {len(str(node.value))} digits (at {_line(node.start_mark)}); "
                              f"the limit is {sys.get_int_max_str_digits()}") from None

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)  # merges (<<) first; without aliases only inline mappings merge
        first_seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = first_seen.setdefault(key, key_node)
            except TypeError:
                continue  # unhashable: the base class reports it
            if first is not key_node:
                raise YamlRefused(f"duplicate key {_short(key)} at {_line(key_node.start_mark)} "
                                  f"(first at {_line(first.start_mark)})")
        return super().construct_mapping(node, deep=deep)


class SafeLoader(_Checked, yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses anchors, aliases, duplicate keys, deep nesting and huge documents."""

    def __init__(self, stream):
        super().__init__(stream)
        self._limits = _Limits()

    def compose_node(self, parent, index):
        nested = self._limits.start(self.peek_event())
        try:
            return super().compose_node(parent, index)
        finally:
            if nested:
                self._limits.end()


if getattr(yaml, "__with_libyaml__", False):
    class _CSafeLoader(_Checked, yaml.CSafeLoader):
        """libyaml's safe loader (about 30 times faster), used only after :func:`_prescan` passed."""
else:  # pragma: no cover - PyYAML built without libyaml
    _CSafeLoader = None

for _loader in filter(None, (SafeLoader, _CSafeLoader)):  # constructors are looked up by tag, not by method
    _loader.add_constructor("tag:yaml.org,2002:int", _Checked.construct_yaml_int)


def _prescan(text: str) -> None:
    """The :class:`_Limits` checks on libyaml's event stream, before anything is composed."""
    parser = yaml._yaml.CParser(text)
    limits = _Limits()
    try:
        while True:
            event = parser.get_event()
            if event is None or isinstance(event, yaml.StreamEndEvent):
                return
            if isinstance(event, yaml.NodeEvent):
                limits.start(event)
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                limits.end()
    finally:
        parser.dispose()


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = [p for p in (exc.context, exc.problem) if p]
        mark = exc.problem_mark or exc.context_mark
        text = " ".join(" ".join(parts).split()) or type(exc).__name__
        return f"{text[:MESSAGE_CHARS]} ({_line(mark)})"
    return " ".join(str(exc).split())[:MESSAGE_CHARS] or type(exc).__name__


def load_text(text: str, fast: bool = True):
    """``yaml.safe_load(text)`` under the limits above; YamlRefused (one line) on any problem.

    With libyaml (and ``fast``), the limits are checked on libyaml's events
    first and the document is then built by libyaml; otherwise by
    :class:`SafeLoader`. Both give ``safe_load``'s result.
    """
    try:
        if fast and _CSafeLoader is not None:
            _prescan(text)
            return yaml.load(text, Loader=_CSafeLoader)  # noqa: S506 -- safe constructor only
        return yaml.load(text, Loader=SafeLoader)  # noqa: S506 -- SafeLoader is a yaml.SafeLoader
    except YamlRefused:
        raise
    except yaml.YAMLError as exc:
        raise YamlRefused(f"not valid YAML: {_yaml_problem(exc)}") from None
    except (ValueError, OverflowError) as exc:  # e.g. an integer of more digits than int() takes
        raise YamlRefused(f"not valid YAML: {type(exc).__name__}: {' '.join(str(exc).split())[:MESSAGE_CHARS]}") \
            from None
    except RecursionError:
        raise YamlRefused("nested too deeply") from None
    except MemoryError:
        raise YamlRefused("too large to read") from None


def read_text(path: str | os.PathLike, max_bytes: int = MAX_BYTES) -> str:
    """A regular file's UTF-8 text, reading at most ``max_bytes + 1`` bytes; YamlRefused otherwise."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise YamlRefused("no such file") from None
    except OSError as exc:
        raise YamlRefused(f"cannot read it: {exc.strerror or type(exc).__name__}") from None
    if stat.S_ISDIR(info.st_mode):
        raise YamlRefused("is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise YamlRefused("not a regular file")  # a FIFO or device would block or never end
    if info.st_size > max_bytes:
        raise YamlRefused(f"too large: {info.st_size} bytes; the limit is {max_bytes}")
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise YamlRefused(f"cannot read it: {exc.strerror or type(exc).__name__}") from None
    if len(data) > max_bytes:  # grew since stat
        raise YamlRefused(f"too large: over {max_bytes} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlRefused(f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                          "is it a binary file?") from None


def load_file(path: str | os.PathLike, max_bytes: int = MAX_BYTES, fast: bool = True):
    """:func:`read_text` then :func:`load_text`."""
    return load_text(read_text(path, max_bytes), fast=fast)
