"""The JSON Schema of report.json ships with the package, matches the models, and accepts what is written."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
from test_report import build_comparison

from backbone_swap.verdict.report import write_report
from backbone_swap.verdict.schema import REPORT_SCHEMA, report_json_schema

ROOT = Path(__file__).resolve().parents[1]


def _shipped() -> dict:
    return json.loads(resources.files("backbone_swap.verdict").joinpath("report.schema.json").read_text("utf-8"))


def test_the_shipped_schema_is_what_the_models_generate():
    assert _shipped() == report_json_schema(), (
        "backbone_swap/verdict/report.schema.json is stale: regenerate it with "
        "python -m backbone_swap.verdict.schema > backbone_swap/verdict/report.schema.json")


def test_the_shipped_schema_is_package_data():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "*.json" in config["package-data"]["backbone_swap.verdict"]


def test_the_schema_requires_the_keys_of_every_record():
    schema = report_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["required"]) == set(REPORT_SCHEMA["report"])
    assert set(schema["$defs"]["Task"]["required"]) == set(REPORT_SCHEMA["task"])
    assert schema["$defs"]["Task"]["additionalProperties"] is True  # later versions may add fields
    assert schema["$defs"]["Task"]["properties"]["verdict"]["enum"] == [
        "upgrade", "keep", "no clear difference", "complementary"]


def test_a_written_report_validates_against_the_shipped_schema(tmp_path):
    try:
        import jsonschema
    except ImportError:
        pytest.fail("jsonschema is not installed; install the test extra: pip install -e '.[test]'")
    schema = _shipped()
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    data = json.loads(write_report(tmp_path, build_comparison())["json"].read_text(encoding="utf-8"))
    validator(schema).validate(data)
    data["tasks"][0]["n"] = "200"
    data["tasks"][1]["verdict"] = "maybe"
    data["meta"].pop("seed")
    assert len(list(validator(schema).iter_errors(data))) == 3
