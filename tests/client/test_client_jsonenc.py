"""JSON fallbacks: no value makes ``dumps`` raise, and what it writes is JSON."""

from __future__ import annotations

import datetime
import decimal
import json
import uuid

import orjson
from hypothesis import given
from hypothesis import strategies as st

from zlog.client.jsonenc import CIRCULAR, dumps


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    __str__ = __repr__


odd_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.binary(),
    st.datetimes(timezones=st.none() | st.just(datetime.UTC)),
    st.dates(),
    st.uuids(),
    st.decimals(),
    st.builds(BadRepr),
    st.builds(ValueError, st.text()),
    st.frozensets(st.integers()),
    st.characters(categories=["Cs"]),
)
keys = st.one_of(st.text(), st.uuids(), st.integers(), st.dates())
documents = st.recursive(
    odd_scalars,
    lambda children: st.lists(children) | st.dictionaries(keys, children),
    max_leaves=30,
)


@given(documents)
def test_any_value_serializes_to_valid_json(value):
    """Whatever the value holds, dumps returns bytes that parse as JSON."""
    json.loads(dumps(value))


def test_common_values_take_the_orjson_path():
    """Plain documents come out exactly as orjson writes them."""
    value = {"a": [1, 2.5, "x"], "b": None}

    assert dumps(value) == orjson.dumps(value)


def test_special_values_are_rendered_readably():
    """Each special value has a readable stand-in."""
    when = datetime.datetime(2024, 5, 1, 12, tzinfo=datetime.UTC)
    key = uuid.UUID(int=1)
    doc = json.loads(
        dumps(
            {
                "when": when,
                "day": datetime.date(2024, 5, 1),
                key: "uuid key",
                "price": decimal.Decimal("1.10"),
                "raw": b"\xff\xfeA",
                "tags": {"x"},
                "error": ValueError("boom"),
                "bad": BadRepr(),
                "lone": "a\ud800b",
                "big": 2**80,
            }
        )
    )

    assert doc["when"] == "2024-05-01T12:00:00+00:00"
    assert doc["day"] == "2024-05-01"
    assert doc[str(key)] == "uuid key"
    assert doc["price"] == "1.10"
    assert doc["raw"] == "\\xff\\xfeA"
    assert doc["tags"] == ["x"]
    assert doc["error"] == "ValueError: boom"
    assert doc["bad"] == "<unrepresentable BadRepr>"
    assert doc["lone"] == "a\\ud800b"
    assert doc["big"] == str(2**80)


def test_circular_reference_is_cut():
    """A structure that contains itself is written with a circular marker."""
    value: dict = {"a": 1}
    value["self"] = value

    assert json.loads(dumps(value)) == {"a": 1, "self": CIRCULAR}


# Keys drawn from a small set so that ones printing alike meet often.
clashing_keys = st.one_of(
    st.integers(0, 3),
    st.integers(0, 3).map(str),
    st.integers(0, 3).map(lambda n: f"{n} (str)"),
    st.sampled_from([True, None, "True", "None"]),
)


@given(st.dictionaries(clashing_keys, st.integers()))
def test_every_key_keeps_its_value(value):
    """No two keys are written under one name, so no value is lost."""
    assert len(json.loads(dumps(value))) == len(value)


def test_keys_with_one_name_are_told_apart_by_type():
    """An int key and a str key that print alike both arrive."""
    assert json.loads(dumps({1: "a", "1": "b"})) == {"1": "a", "1 (str)": "b"}


def test_tuple_keys_become_strings():
    """Keys orjson cannot write become their repr."""
    assert json.loads(dumps({(1, 2): "x"})) == {"(1, 2)": "x"}
