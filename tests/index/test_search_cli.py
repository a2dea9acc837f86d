"""``modalign search``: a table or JSON lines, queries by id, text and file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modalign.cli import main
from modalign.index import Index
from modalign.index import query as query_module


@pytest.fixture
def tiny_index(tmp_path):
    idx = Index(model_id="m", run=None)
    idx.add(
        ["a", "b"],
        "image",
        np.eye(3, dtype=np.float32)[:2],
        [{"source": "a.png", "caption": "a cat"}, {}],
    )
    idx.add(["t"], "text", np.array([[0.6, 0.8, 0.0]], dtype=np.float32), [{"caption": "a kitten"}])
    return idx.save(tmp_path / "ix")


def test_search_by_id_table_and_json(tiny_index, capsys):
    assert main(["search", str(tiny_index), "--id", "a", "--k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "score", "modality", "id", "caption", "/", "source"]
    assert lines[1].split()[:4] == ["1", "1.0000", "image", "a"] and lines[1].endswith("a cat")
    assert lines[2].split()[:4] == ["2", "0.6000", "text", "t"]
    assert main(["search", str(tiny_index), "--id", "a", "--modality", "image", "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"] and rows[0]["metadata"]["source"] == "a.png"


def test_search_errors_are_one_line(tiny_index, capsys):
    assert main(["search", str(tiny_index), "--id", "zzz"]) == 1
    assert "'zzz' is not in the index" in capsys.readouterr().err
    assert main(["search", str(tiny_index), "--text", "a cat"]) == 1  # no run recorded
    assert "no model" in capsys.readouterr().err
    assert main(["search", str(tiny_index.parent / "missing"), "--id", "a"]) == 1
    assert "not an index folder" in capsys.readouterr().err


def test_search_text_and_file_through_the_runs_model(capsys, monkeypatch, real_encoder, real_index):
    folder = real_index
    # the index records no run: stand the test model in for ``modalign.load`` of one
    monkeypatch.setattr(query_module, "load_encoder", lambda index: real_encoder)
    assert main(["search", str(folder), "--text", "a green frog", "--k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == "cap5"
    image = Index.load(folder).item("img3").metadata["source"]
    assert (
        main(["search", str(folder), "--file", image, "--modality", "image", "--k", "1", "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["id"] == "img3"
