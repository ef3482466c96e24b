"""The validation mechanism shared by recipes, suites and report.json, on a small document of its own."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import pytest
from pydantic import Field, model_validator

from backbone_swap import schemas
from backbone_swap.errors import BackboneSwapError
from backbone_swap.schemas import expect, one_of


class Item(schemas.Closed):
    name: Annotated[schemas.Text, expect("a string")]
    weight: Annotated[schemas.Number, Field(ge=0), schemas.NUMERIC_TEXT, expect("a non-negative number")] = 1.0
    count: Annotated[schemas.Integer, Field(ge=1), expect("a positive integer")] = 1
    flag: Annotated[schemas.Boolean, expect("true or false")] = False
    kind: one_of(("plain", "fancy")) = "plain"


class Document(schemas.Closed):
    items: Annotated[tuple[Item, ...], expect("a list of items")]


VOICE = schemas.Voice(document="suite")


def _check(data: Any) -> BackboneSwapError:
    with pytest.raises(BackboneSwapError) as caught:
        schemas.validate(Document, data, "suite x.yaml", VOICE)
    return caught.value


def test_valid_data_becomes_the_model_and_numeric_text_a_number():
    document = schemas.validate(Document, {"items": [{"name": "a", "weight": "1e-3"}, {"name": "b", "count": 3}]},
                                "suite x.yaml", VOICE)
    assert document.items[0] == Item(name="a", weight=0.001) and document.items[1].count == 3
    assert isinstance(document.items[0].weight, float) and document.items[0].kind == "plain"
    assert len({document.items[0], Item(name="a", weight=0.001)}) == 1  # frozen models hash by value


def test_a_problem_names_the_document_the_dotted_key_what_it_takes_and_the_value():
    error = _check({"items": [{"name": "a"}, {"name": "b", "count": 0}]})
    assert error.message == "suite x.yaml: items[1].count must be a positive integer, not 0"
    assert error.hint == "Fix items[1].count in the suite"


@pytest.mark.parametrize(("key", "value"), [
    ("count", True), ("count", 8.0), ("count", "8"),  # a bool, a float or text is no integer
    ("flag", "yes"), ("flag", 1),  # nor text or a number a boolean
    ("name", ["a"]), ("name", 3),
    ("weight", float("nan")), ("weight", "inf"), ("weight", True), ("weight", [1.0]), ("weight", "-1"),
    ("kind", "Plain"), ("kind", None),
])
def test_what_lax_pydantic_would_convert_is_refused(key: str, value: Any):
    error = _check({"items": [{"name": "a", key: value}]})
    assert error.message.startswith(f"suite x.yaml: items[0].{key} must be "), error.message
    assert error.message.endswith(f", not {schemas.show(value)}")


def test_choices_are_named():
    assert _check({"items": [{"name": "a", "kind": "odd"}]}).message == \
        "suite x.yaml: items[0].kind must be one of plain, fancy, not 'odd'"


def test_an_unknown_key_comes_first_with_the_closest_known_one():
    error = _check({"items": [{"nmae": "a", "count": "many"}]})  # also: name missing, count wrong
    assert error.message == "suite x.yaml: unknown key items[0].nmae"
    assert error.hint == "Did you mean items[0].name? Known keys under items[0]: name, weight, count, flag, kind"


def test_missing_keys_and_wrong_shapes():
    assert _check({"items": [{}]}).message == "suite x.yaml: items[0].name is missing"
    assert _check({"items": [{}]}).hint == "Add name to items[0] of the suite"
    assert _check({"items": "a"}).message == "suite x.yaml: items must be a list of items, not 'a'"
    error = _check({"items": [["a"]]})
    assert error.message == 'suite x.yaml: items[0] must be a mapping of settings, not a list ["a"]'
    assert "shipped suites" in error.hint
    assert _check(["a"]).message == 'suite x.yaml: must be a mapping of settings, not a list ["a"]'


def test_problems_lists_every_one_with_its_path():
    found = schemas.problems(Document, {"items": [{"name": 1}, {"name": "b", "flag": "no"}]}, VOICE)
    assert [(p.path, p.text) for p in found] == [
        ("items[0].name", "items[0].name must be a string, not 1"),
        ("items[1].flag", "items[1].flag must be true or false, not 'no'"),
    ]
    assert schemas.problems(Document, {"items": []}, VOICE) == []


def test_a_rule_across_keys_names_the_key_it_is_about():
    class Pair(schemas.Closed):
        low: Annotated[schemas.Integer, expect("an integer")]
        high: Annotated[schemas.Integer, expect("an integer")]

        @model_validator(mode="after")
        def _ordered(self) -> Pair:
            if self.low > self.high:
                raise schemas.broken(("high", f"must be at least low ({self.low})"), hint="Swap them")
            return self

    with pytest.raises(BackboneSwapError) as caught:
        schemas.validate(Pair, {"low": 2, "high": 1}, "pair p.yaml")
    assert (caught.value.message, caught.value.hint) == ("pair p.yaml: high must be at least low (2)", "Swap them")


def test_models_are_read_only():
    item = Item(name="a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        item.count = 2  # type: ignore[misc]


def test_dotted_paths_and_known_keys():
    assert schemas.dotted(("tasks", 0, "overlap", "both")) == "tasks[0].overlap.both"
    assert schemas.dotted(()) == ""
    assert schemas.known_keys(Document, ()) == ["items"]
    assert schemas.known_keys(Document, ("items", 0)) == ["name", "weight", "count", "flag", "kind"]


def test_a_yaml_syntax_error_is_placed_on_its_line_and_column():
    with pytest.raises(BackboneSwapError) as caught:
        schemas.parse_yaml("a: 1\n b: 2\n", "recipe r.yaml")
    # a key indented under a plain value: PyYAML stops at the colon after "b", the second line's third character
    assert caught.value.message == "recipe r.yaml is not valid YAML at line 2, column 3: mapping values are not " \
                                   "allowed here"
