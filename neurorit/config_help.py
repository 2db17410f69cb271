"""The config reference that ``--help`` prints on every entry point: each key of ``neurorit/config.py`` with its
type, its default and the comment written beside it in the source (the one place keys are documented)."""
from __future__ import annotations

import dataclasses
import inspect
import re
import typing

_FIELD = re.compile(r"^\s+(\w+)\s*:[^#]*?(?:#\s*(?P<comment>.*))?$")
_COMMENT = re.compile(r"^\s+#\s?(?P<text>.*)$")


def _comments(cls) -> dict[str, str]:
    """``{field: its comment}`` from the dataclass's source: the comment lines right above the field, then the
    comment on its own line."""
    out, above = {}, []
    for line in inspect.getsource(cls).splitlines():
        comment = _COMMENT.match(line)
        if comment:
            above.append(comment.group("text").strip())
            continue
        match = _FIELD.match(line)
        if match:
            text = " ".join(above + ([match.group("comment").strip()] if match.group("comment") else []))
            if text:
                out[match.group(1)] = text
        above = []
    return out


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union,) or type(tp).__name__ == "UnionType":
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(tp))
        return " or ".join(_type_name(a) for a in args) + (" or null" if nullable else "")
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping (key: value, or key=value,... on the command line)"
    return getattr(tp, "__name__", str(tp))


def config_rows(obj, prefix: str = ""):
    """``(dotted key, type, default, comment)`` of every leaf field of a config dataclass, in order."""
    hints = typing.get_type_hints(type(obj))
    comments = _comments(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from config_rows(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", _type_name(hints[f.name]), value, comments.get(f.name, "")


def config_reference(config) -> str:
    """Every key of the config dataclass instance ``config`` (its defaults) as ``--section.key  TYPE  (default V)
    comment``, in the config's order."""
    lines = ["config keys (override any with --section.key VALUE; --print-config shows the resolved config; a "
             "relative path in the --config file is relative to that file's folder, one on the command line to the "
             "working directory):"]
    for key, type_name, default, comment in config_rows(config):
        shown = repr(default) if isinstance(default, str) else default
        lines.append(f"  --{key}  {type_name}  (default {shown})" + (f"  {comment}" if comment else ""))
    return "\n".join(lines)
