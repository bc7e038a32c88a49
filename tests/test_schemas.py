"""Each table's Parquet schema and its typed row class declare the same columns, types and nulls: the build's
manifests (`data_specs.schemas`) and the evaluation's per-clip table (`data_specs.evaluation`)."""

from __future__ import annotations

import dataclasses
import types
import typing

import pyarrow as pa
import pytest

from data_specs.evaluation import EVAL_CLIPS, EvalClipRow
from data_specs.schemas import ROWS, TABLES

# Every table written as Parquet: its schema and its row class.
SCHEMAS_AND_ROWS: dict[str, tuple[pa.Schema, type]] = {
    **{name: (TABLES[name], ROWS[name]) for name in TABLES}, "evaluation clips": (EVAL_CLIPS, EvalClipRow)}

# The Arrow types a row field of each Python type may be written as.
ARROW_TYPES: dict[object, tuple[pa.DataType, ...]] = {
    str: (pa.string(),),
    int: (pa.int32(), pa.int64()),
    float: (pa.float32(), pa.float64()),
    bool: (pa.bool_(),),
    list[int]: (pa.list_(pa.int32()), pa.list_(pa.int64())),
    list[str]: (pa.list_(pa.string()),),
}


def _python_type(hint: object) -> tuple[object, bool]:
    """(the type without None, whether None is allowed); a Literal of strings is a str."""
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    if optional:
        (hint,) = [arg for arg in args if arg is not type(None)]
    if typing.get_origin(hint) is typing.Literal:
        assert all(isinstance(value, str) for value in typing.get_args(hint)), hint
        hint = str
    return hint, optional


def test_every_table_has_a_row_class():
    assert set(ROWS) == set(TABLES)


@pytest.mark.parametrize("table", sorted(SCHEMAS_AND_ROWS))
def test_the_schema_and_the_row_class_agree(table: str):
    schema, row = SCHEMAS_AND_ROWS[table]
    hints = typing.get_type_hints(row)
    fields = [field.name for field in dataclasses.fields(row)]
    assert sorted(fields) == sorted(schema.names), f"{table}: columns differ"
    for name in fields:
        python, optional = _python_type(hints[name])
        column = schema.field(name)
        assert column.type in ARROW_TYPES[python], f"{table}.{name}: {hints[name]} written as {column.type}"
        # A row field that may be None needs a nullable column; a column that refuses nulls needs a required field.
        assert column.nullable or not optional, f"{table}.{name} may be None but its column is not nullable"


def test_a_row_of_the_wrong_class_is_refused():
    from data_specs.schemas import ClipRow, to_table

    row = ClipRow(clip_id="v_c00000", video_id="v", clip_index=0, frame_indices=[0, 1], time_start_s=0.0,
                  time_end_s=0.1, fps=10.0, scene_index=0, source_path="v.mp4", config_hash="c", code_version="v",
                  unit_id="u")
    assert to_table("clips", [row]).num_rows == 1
    with pytest.raises(TypeError, match="samples rows must be SampleRow, got ClipRow"):
        to_table("samples", [row])
