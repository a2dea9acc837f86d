import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modalign.data.manifest import assign_splits, read_manifest
from modalign.errors import DataError

ROWS = [
    {"id": "a", "image": "a.png", "text": "a cat", "group": "g1", "split": "train"},
    {"id": "b", "image": "", "text": "a dog", "group": "g1", "split": "val"},
    {"id": "c", "image": "c.png", "text": "", "group": "g2", "split": "test"},
]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_formats_read_the_same(tmp_path: Path, suffix: str) -> None:
    frame = pd.DataFrame(ROWS)
    path = tmp_path / f"m{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    else:
        frame.to_parquet(path)
    m = read_manifest(path)
    assert m.modalities == ["image", "text"]
    assert m.ids == ["a", "b", "c"]
    assert m.cells == {"image": ["a.png", None, "c.png"], "text": ["a cat", "a dog", None]}
    assert m.groups is not None and m.groups.tolist() == [0, 0, 1]
    assert m.splits == ["train", "val", "test"]
    assert m.resolve("a.png") == tmp_path.resolve() / "a.png"


def test_without_id_rows_are_numbered(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("image,text\nx,y\nz,w\n")
    m = read_manifest(path)
    assert m.ids == ["0", "1"] and m.groups is None and m.splits is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("id,image,text\na,x,y\na,z,w\n", r"m\.csv, row 2: duplicate id 'a' \(first at row 1\)"),
        (
            "id,image,text,split\na,x,y,train\nb,z,w,dev\n",
            r"row 2 \(id 'b'\): field 'split' is 'dev', expected one of train, val, test",
        ),
        ("id,image,text\n", r"manifest has no rows"),
        ("id,group\na,1\n", r"no modality columns"),
        ("id,image,text\n,x,y\n", r"row 1: field 'id' is empty"),
    ],
)
def test_bad_manifests_name_file_row_field(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "m.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_manifest(path)


def test_unknown_modality_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("image,text\nx,y\n")
    with pytest.raises(DataError, match="no column 'audio'"):
        read_manifest(path, ["audio"])
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv")
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(DataError, match="unknown manifest type"):
        read_manifest(tmp_path / "m.txt")


def test_a_blank_column_name_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    pd.DataFrame({"id": ["a"], "image": ["x.png"], " ": ["y"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"column 3 of the header has no name"):
        read_manifest(path)


@pytest.mark.parametrize(
    ("column", "problem"),
    [
        ("speech_to_text", "contains '_to_'"),
        ("image_vs_text", "contains '_vs_'"),
        ("a/b", "contains '/'"),
        ("a~b", "contains '~'"),
        ("photo_to", "starts or ends with 'to'"),
    ],
)
def test_modality_names_that_break_metric_keys_are_refused(
    tmp_path: Path, column: str, problem: str
) -> None:
    path = tmp_path / "m.csv"
    pd.DataFrame({"id": ["a"], "image": ["x.png"], column: ["y"]}).to_csv(path, index=False)
    with pytest.raises(DataError) as err:
        read_manifest(path)
    message = str(err.value)
    assert message.startswith(f"{path}: column {column!r} cannot name a modality: it {problem}")
    assert "\n" not in message
    with pytest.raises(DataError, match="cannot name a modality"):
        read_manifest(path, ["image", column])  # also when the config names it


def test_modality_names_with_underscores_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("id,image_hd,spoken text,tox\na,x,y,z\n")
    assert read_manifest(path).modalities == ["image_hd", "spoken text", "tox"]


def test_seeded_split_keeps_groups_together_and_is_stable(tmp_path: Path) -> None:
    n = 3000
    groups = np.arange(n) // 5
    path = tmp_path / "m.csv"
    pd.DataFrame({"a": ["x"] * n, "b": ["y"] * n, "group": groups}).to_csv(path, index=False)
    m = read_manifest(path)
    fractions = {"train": 0.7, "val": 0.1, "test": 0.2}
    splits = np.array(assign_splits(m, fractions, seed=3))
    for g in range(0, n // 5, 37):
        assert len(set(splits[groups == g])) == 1
    share = {s: float(np.mean(splits == s)) for s in fractions}
    assert abs(share["train"] - 0.7) < 0.06 and abs(share["test"] - 0.2) < 0.05
    assert (splits == np.array(assign_splits(m, fractions, seed=3))).all()
    assert (splits != np.array(assign_splits(m, fractions, seed=4))).any()


@pytest.mark.parametrize(
    "content",
    [
        "a,b\n\n1,2\n   \n",  # blank lines are skipped
        "\ufeffid,a\n1,2\n",  # byte-order mark
        'a,b\n"x, y","he said ""hi"""\n"x\ny",z\n',  # quotes, embedded newline
        "a,b\r\n NA , nan\r\nNone,\r\n",  # no NA parsing; cells stripped
        "id,a\n1.0,2\n007,3\n",  # numbers stay text
    ],
)
def test_csv_reader_matches_pandas_on_well_formed_files(tmp_path: Path, content: str) -> None:
    from modalign.data.manifest import _as_text, read_table

    path = tmp_path / "m.csv"
    path.write_bytes(content.encode("utf-8"))
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    expected = {str(c): [_as_text(v) for v in frame[c].tolist()] for c in frame.columns}
    assert read_table(path) == expected


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", r"the first line \(the header\) is empty"),
        ("a,b\n1,2\n3,4,5\n", r"line 3: 3 fields, but the header has 2"),
        ("a,b,c\n1,2\n", r"line 2: 2 fields, but the header has 3"),  # pandas pads silently
        ("a,a,b\n1,2,3\n", r"column 'a' appears twice in the header"),
        ("a,,b\n1,2,3\n", r"column 2 of the header has no name"),
        ('a,b\n"x,y\n', "cannot parse manifest"),
    ],
)
def test_csv_reader_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "m.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_manifest(path)


def test_reading_a_csv_manifest_does_not_import_pandas(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "m.csv"
    path.write_text("id,image,text\na,x,y\n")
    code = f"import sys; from modalign.data.manifest import read_manifest; read_manifest({str(path)!r}); print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
