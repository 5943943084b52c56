"""JSON for the launcher without ``import json``: :func:`dumps` and :func:`loads` over ``_json``.

Why: ``import json`` pulls in ``re`` (and with it ``enum``, ``functools``, ``collections``): ~8 ms
of CPU in every ``tv-sandbox run`` -- a sixth of the start-up budget -- for the few documents the
launcher writes and reads (the report, the manifest, the policy record, event lines). The C
accelerator module ``_json`` that ``json`` itself uses needs none of that; what ``json`` adds on
top is an indenting encoder, written here.

The output is ``json.dumps``'s, byte for byte, for what the package writes: ``None``, ``bool``,
``int``, ``float``, ``str`` (and their subclasses), lists, tuples and dicts, ``ensure_ascii``,
keys in insertion order or sorted (``tests/test_json.py`` compares the two). Anything else raises
``TypeError`` as ``json.dumps`` does.

:func:`loads` returns what ``json.loads`` returns, and raises what it raises -- the same exception,
the same message: every document the C scanner does not take whole (an invalid one; bytes that are
not plain UTF-8: a BOM, UTF-16) is handed to ``json.loads`` itself, imported then, on that path
only. The run folder is the step's: the launcher reads documents there that a hostile step wrote.
"""

from __future__ import annotations

from _json import encode_basestring_ascii as _str
from _json import make_scanner as _make_scanner

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any

_INF = float("inf")
_WS = " \t\n\r"


def dumps(
    obj: Any,
    *,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """``json.dumps(obj, indent=indent, separators=separators, sort_keys=sort_keys)``."""
    if separators is None:
        separators = (",", ": ") if indent is not None else (", ", ": ")
    parts: list[str] = []
    _encode(obj, parts, indent, 0, separators, sort_keys)
    return "".join(parts)


def _float(o: float) -> str:
    if o != o:
        return "NaN"
    if o == _INF:
        return "Infinity"
    if o == -_INF:
        return "-Infinity"
    return float.__repr__(o)


def _key(k: Any) -> str:
    if isinstance(k, str):
        return k
    if k is True:
        return "true"
    if k is False:
        return "false"
    if k is None:
        return "null"
    if isinstance(k, int):
        return int.__repr__(k)
    if isinstance(k, float):
        return _float(k)
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(k).__name__}")


def _encode(
    o: Any, out: list[str], indent: int | None, level: int, seps: tuple[str, str], sort_keys: bool
) -> None:
    item_sep, key_sep = seps
    if isinstance(o, str):
        out.append(_str(o))
    elif o is None:
        out.append("null")
    elif o is True:
        out.append("true")
    elif o is False:
        out.append("false")
    elif isinstance(o, int):
        out.append(int.__repr__(o))
    elif isinstance(o, float):
        out.append(_float(o))
    elif isinstance(o, (list, tuple)):
        if not o:
            out.append("[]")
            return
        out.append("[")
        sep, close = _layout(indent, level, item_sep)
        out.append(sep[len(item_sep) :])
        for i, v in enumerate(o):
            if i:
                out.append(sep)
            _encode(v, out, indent, level + 1, seps, sort_keys)
        out.append(close + "]")
    elif isinstance(o, dict):
        if not o:
            out.append("{}")
            return
        out.append("{")
        sep, close = _layout(indent, level, item_sep)
        out.append(sep[len(item_sep) :])
        for i, (k, v) in enumerate(sorted(o.items()) if sort_keys else o.items()):
            if i:
                out.append(sep)
            out.append(_str(_key(k)))
            out.append(key_sep)
            _encode(v, out, indent, level + 1, seps, sort_keys)
        out.append(close + "}")
    else:
        raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def _layout(indent: int | None, level: int, item_sep: str) -> tuple[str, str]:
    """The separator between the items of a container at ``level``, and what precedes its end."""
    if indent is None:
        return item_sep, ""
    inner = "\n" + " " * (indent * (level + 1))
    return item_sep + inner, "\n" + " " * (indent * level)


class _Context:
    """What ``_json.make_scanner`` reads of a ``json.JSONDecoder``: its defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": -_INF, "Infinity": _INF, "NaN": float("nan")}.__getitem__


_scan = _make_scanner(_Context())  # type: ignore[arg-type]  # duck-typed: the attributes above


def loads(s: str | bytes) -> Any:
    """``json.loads(s)`` (bytes: UTF-8 here; other encodings through ``json``)."""
    if isinstance(s, str):
        text = s
    elif isinstance(s, (bytes, bytearray)):
        try:
            text = s.decode("utf-8")
        except UnicodeDecodeError:  # json decodes UTF-16/32 and lone surrogates (surrogatepass)
            return _as_json_does(s)
    else:  # json's TypeError, word for word
        return _as_json_does(s)
    start = len(text) - len(text.lstrip(_WS))
    try:
        obj, end = _scan(text, start)
    except (StopIteration, SystemError):
        # SystemError: Python 3.11's scanner raises its errors as ``json.decoder.JSONDecodeError``,
        # which it looks up in ``sys.modules`` without importing it -- not there (json is kept off
        # start-up), it fails with "returned NULL without setting an exception" (3.12 imports it).
        return _as_json_does(s)
    if text[end:].strip(_WS):  # "Extra data"
        return _as_json_does(s)
    return obj


def load(fh: IO[str] | IO[bytes]) -> Any:
    """``json.load(fh)``."""
    return loads(fh.read())


def _as_json_does(s: Any) -> Any:
    """``json.loads(s)``, for a document the fast path did not take: its error, by construction
    (or its value: a document with a UTF-8 BOM or in UTF-16, as bytes)."""
    import json  # not a start-up cost: only for what the launcher itself never writes

    return json.loads(s)
