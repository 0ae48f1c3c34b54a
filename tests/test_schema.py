"""The scenario and sweep formats: the JSON Schema from the models accepts every example and built-in, names
every op the loader accepts, rejects what the loader rejects; the docs' reference is the generator's output."""
import json
import tomllib
from pathlib import Path

import jsonschema
import pydantic
import pytest
from click.testing import CliRunner

from mmugather.cli import main
from mmugather.schema import DOCS, json_schema, op_models, op_tag, with_reference
from mmugather.workloads import scenario as S
from mmugather.workloads.builtin import BUILTIN

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = sorted((ROOT / "examples").glob("*.toml"))
SWEEPS = sorted((ROOT / "examples" / "sweeps").glob("*.toml"))


def validator(kind):
    return jsonschema.Draft202012Validator(json_schema(kind))


@pytest.mark.parametrize("path", SCENARIOS + SWEEPS, ids=lambda p: p.name)
def test_every_example_validates_against_its_schema(path):
    kind = "sweep" if path.parent.name == "sweeps" else "scenario"
    validator(kind).validate(tomllib.loads(path.read_text()))


def test_every_builtin_workload_validates_against_the_scenario_schema():
    v = validator("scenario")
    for make in BUILTIN.values():
        v.validate(make())


def test_the_schema_names_every_op_the_loader_accepts():
    defs = json_schema("scenario")["$defs"]
    in_schema = {d["properties"]["op"]["const"] for d in defs.values() if "op" in d.get("properties", {})}
    assert in_schema == S._OP_TAGS == {op_tag(m) for m in op_models()}
    assert {"mprotect", "mremap", "gup_fast", "truncate", "halt", "fork"} <= in_schema


@pytest.mark.parametrize("op", [{"op": "munmapp", "vma": "a"}, {"op": "munmap", "vma": "a", "sise": 4096},
                                {"op": "touch", "vma": "a", "size": "64 MB"}, {"op": "sleep", "ns": "1ms"}])
def test_the_schema_rejects_what_the_loader_rejects(op):
    doc = {"process": [{"name": "p", "vma": [{"name": "a", "size": "64MiB"}], "thread": [{"cpu": 0, "program": [op]}]}]}
    assert not validator("scenario").is_valid(doc)
    with pytest.raises(pydantic.ValidationError):
        S.Scenario.model_validate(doc)


def test_sizes_in_the_schema_take_the_loaders_units():
    v = validator("scenario")
    for size in (4096, "64MiB", "2 GiB", "16 pages", "8kib"):
        doc = {"process": [{"name": "p", "vma": [{"name": "a", "size": size}], "thread": [{"cpu": 0}]}]}
        assert v.is_valid(doc), size
        S.Scenario.model_validate(doc)


@pytest.mark.parametrize("kind", list(DOCS))
def test_the_committed_reference_is_the_generators_output(kind):
    """Fails when a model changed and `python -m mmugather.schema` was not run (or the doc was hand-edited)."""
    text = (ROOT / DOCS[kind]).read_text()
    assert with_reference(text, kind) == text


def test_the_scenario_reference_documents_every_op():
    text = (ROOT / DOCS["scenario"]).read_text()
    for tag in S._OP_TAGS:
        assert f'#### `op = "{tag}"`' in text


@pytest.mark.parametrize("kind", ["scenario", "sweep"])
def test_the_schema_command_prints_the_schema(kind):
    out = CliRunner().invoke(main, ["schema", kind])
    assert out.exit_code == 0 and json.loads(out.output) == json_schema(kind)
