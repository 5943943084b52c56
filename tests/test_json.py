"""``sandbox._json`` writes what ``json`` writes, byte for byte, and reads what it reads;
``sandbox._digest`` gives ``hashlib``'s SHA-256 on both sides of its OpenSSL threshold."""

from __future__ import annotations

import hashlib
import json
import math

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


@pytest.mark.parametrize("bad", ["", "  ", "{", "[1,]", "1 2", "nul", '"x', "[1] x", '{"a" 1}'])
def test_invalid_documents_fail_as_json_does(bad: str) -> None:
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(bad)
    with pytest.raises(json.JSONDecodeError) as got:
        _json.loads(bad)
    assert (got.value.msg, got.value.pos) == (expected.value.msg, expected.value.pos)


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
