"""``sandbox._json`` writes what ``json`` writes, byte for byte, and reads what it reads;
``sandbox._digest`` gives ``hashlib``'s SHA-256 on both sides of its OpenSSL threshold."""

from __future__ import annotations

import ast
import hashlib
import json
import math
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox import _json
from sandbox._digest import OPENSSL_FROM, sha256, sha256_hex

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
keys = st.text() | st.integers() | st.booleans() | st.none() | st.floats(allow_nan=False)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.tuples(inner, inner)
    | st.dictionaries(keys, inner, max_size=4),
    max_leaves=20,
)
SEPARATORS = [None, (", ", ": "), (",", ":"), (",", ": ")]


@settings(max_examples=300, deadline=None)
@given(
    doc=documents,
    indent=st.sampled_from([None, 0, 1, 2]),
    seps=st.sampled_from(SEPARATORS),
    sort_keys=st.booleans(),
)
def test_dumps_is_json_dumps(doc: object, indent: int | None, seps: tuple[str, str] | None, sort_keys: bool) -> None:
    try:
        expected = json.dumps(doc, indent=indent, separators=seps, sort_keys=sort_keys)
    except TypeError:  # keys of mixed types json cannot sort: neither can we
        with pytest.raises(TypeError):
            _json.dumps(doc, indent=indent, separators=seps, sort_keys=sort_keys)
        return
    assert _json.dumps(doc, indent=indent, separators=seps, sort_keys=sort_keys) == expected


@settings(max_examples=300, deadline=None)
@given(doc=documents, indent=st.sampled_from([None, 1]), pad=st.sampled_from(["", " ", "\n\t "]))
def test_loads_is_json_loads(doc: object, indent: int | None, pad: str) -> None:
    text = pad + json.dumps(doc, indent=indent) + pad
    got, expected = _json.loads(text), json.loads(text)
    # NaN is not equal to itself: compare the documents through their text
    assert json.dumps(got) == json.dumps(expected)
    assert _json.loads(text.encode()) == got or "NaN" in text


# What the launcher reads back from a run folder a hostile step had in its hands: anything.
MALFORMED = [
    "", "  ", "{", "[", '"', "[1,]", "1 2", "nul", '"x', "[1] x", '{"a" 1}', '{"a":', '{"a":1,}', "{1:2}",
    '"\\x"', '"\\u12"', '"\x01"', "-", "1e", "NaNx", "\ufeff{}", "\ufeff", "[" * 5 + "1" + "]" * 4,
    '{"time": 1, "pid": 2', '{"a": 1}\n{"b": 2}',
]  # fmt: skip


def _outcome(loads: Callable[[Any], Any], doc: str | bytes) -> tuple[object, ...]:
    """What ``loads(doc)`` gives: its value as json writes it, or its exception's type and text."""
    try:
        value = loads(doc)
    except Exception as e:  # whatever it is, it must be json's
        return (type(e), str(e), e.args)
    return ("value", json.dumps(value))


@pytest.mark.parametrize("bad", MALFORMED)
def test_invalid_documents_fail_as_json_does(bad: str) -> None:
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(bad)
    with pytest.raises(json.JSONDecodeError) as got:
        _json.loads(bad)
    assert (got.value.msg, got.value.pos) == (expected.value.msg, expected.value.pos)
    assert _outcome(_json.loads, bad) == _outcome(json.loads, bad)
    assert _outcome(_json.loads, bad.encode()) == _outcome(json.loads, bad.encode())


def test_invalid_documents_fail_as_json_does_where_json_was_never_imported() -> None:
    """The launcher keeps ``json`` off its start-up: ``_json.loads`` must raise json's error there too
    (Python 3.11's C scanner raised ``SystemError`` when ``json.decoder`` was not loaded)."""
    code = (
        "import sys\n"
        "from sandbox import _json\n"
        "assert 'json' not in sys.modules, 'sandbox._json imports json'\n"
        "out = []\n"
        "for doc in sys.argv[1:]:\n"
        "    for name in [m for m in sys.modules if m == 'json' or m.startswith('json.')]:\n"
        "        del sys.modules[name]  # each document meets an interpreter that never loaded json\n"
        "    try:\n"
        "        _json.loads(doc)\n"
        "        out.append(['value'])\n"
        "    except Exception as e:\n"
        "        out.append([type(e).__name__, str(e), isinstance(e, ValueError)])\n"
        "print(repr(out))\n"
    )
    docs = [d for d in MALFORMED if "\x00" not in d]
    r = subprocess.run([sys.executable, "-c", code, *docs], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    got = ast.literal_eval(r.stdout)
    for doc, outcome in zip(docs, got, strict=True):
        with pytest.raises(json.JSONDecodeError) as expected:
            json.loads(doc)
        assert outcome == ["JSONDecodeError", str(expected.value), True], doc


_CHARS = st.sampled_from([*'{}[]",:.-+0123456789eEtrufalsnNIy \t\n\r\\/', "\ufeff", "\x00", "\x1f", "\u00e9"])


@st.composite
def mangled(draw: st.DrawFn) -> str:
    """A JSON document cut short, or with a character dropped, added or replaced."""
    text = json.dumps(draw(documents), indent=draw(st.sampled_from([None, 1])))
    i = draw(st.integers(0, len(text)))
    edit = draw(st.sampled_from(["cut", "drop", "insert", "replace"]))
    if edit == "cut":
        return text[:i]
    if edit == "drop":
        return text[:i] + text[i + 1 :]
    c = draw(_CHARS)
    return text[:i] + c + text[i + (edit == "replace") :]


@settings(max_examples=500, deadline=None)
@given(doc=mangled() | st.text(_CHARS, max_size=12))
def test_mangled_documents_give_what_json_gives(doc: str) -> None:
    """Value or error -- same type, same message -- for a str and for its UTF-8 (or UTF-16) bytes."""
    assert _outcome(_json.loads, doc) == _outcome(json.loads, doc)
    for raw in (doc.encode("utf-8", "surrogatepass"), doc.encode("utf-16", "surrogatepass")):
        assert _outcome(_json.loads, raw) == _outcome(json.loads, raw)


def test_what_json_cannot_read_is_refused_alike() -> None:
    for bad in (None, 1, ["{}"]):
        assert _outcome(_json.loads, bad) == _outcome(json.loads, bad)  # type: ignore[arg-type]
    deep = "[" * 100_000  # the scanner's recursion limit: json's RecursionError, not a crash of its own
    assert _outcome(_json.loads, deep) == _outcome(json.loads, deep)


def test_what_json_cannot_write_is_refused() -> None:
    for bad in (object(), {1j: 1}, {(1, 2): 3}, b"bytes"):
        with pytest.raises(TypeError):
            json.dumps(bad)
        with pytest.raises(TypeError):
            _json.dumps(bad)
    assert _json.dumps([math.inf, -math.inf, math.nan]) == "[Infinity, -Infinity, NaN]"


@pytest.mark.parametrize("size", [0, 1, 4096, OPENSSL_FROM - 1, OPENSSL_FROM, 3 * OPENSSL_FROM + 7])
def test_sha256_is_hashlibs_on_both_sides_of_the_threshold(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    h = sha256(size)
    for i in range(0, size, 65536):
        h.update(memoryview(data)[i : i + 65536])
    assert h.hexdigest() == hashlib.sha256(data).hexdigest() == sha256_hex(data)
