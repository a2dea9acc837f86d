"""The tuxpaint manifest builder on a generated stamps tree, and on the real package when installed."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from modalign.data.manifest import read_manifest
from modalign.data.tuxpaint import DEFAULT_ROOT, build_tuxpaint_manifest, read_caption
from modalign.errors import DataError


def make_tree(root: Path) -> Path:
    sf = pytest.importorskip("soundfile")
    Image = pytest.importorskip("PIL.Image")
    animals = root / "animals"
    animals.mkdir(parents=True)
    for name, caption in [
        ("cat", "A cat."),
        ("cat-1", "A cat."),
        ("dog", "A dog."),
        ("tool", "A tool."),
    ]:
        Image.new("RGBA", (8, 8)).save(animals / f"{name}.png")
        (animals / f"{name}.txt").write_text(f"{caption}\nfr.utf8=Traduction.\n", encoding="utf-8")
    Image.new("RGBA", (8, 8)).save(animals / "tool_mirror.png")  # pre-mirrored render, not a stamp
    (animals / "star.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (animals / "star.txt").write_text("A star.\n")
    tone = np.zeros(800, np.float32)
    sf.write(animals / "dog.ogg", tone, 8000, format="OGG")
    sf.write(animals / "dog_desc.ogg", tone, 8000, format="OGG")
    sf.write(animals / "dog_desc_fr.ogg", tone, 8000, format="OGG")  # not English
    sf.write(
        animals / "cat_en_GB.ogg", tone, 8000, format="OGG"
    )  # English sound for letters/digits
    sf.write(animals / "wallaby_desc.ogg", tone, 8000, format="OGG")  # no stamp
    return root


def test_builds_a_manifest_from_a_stamps_tree(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "stamps")
    path = build_tuxpaint_manifest(tmp_path / "m.csv", root, include_svg=True)
    m = read_manifest(path)
    assert m.modalities == ["image", "caption", "sound", "description"]
    assert m.ids == ["animals/cat", "animals/cat-1", "animals/dog", "animals/star", "animals/tool"]
    assert m.cells["caption"][2] == "A dog."
    assert m.cells["sound"][2].endswith("dog.ogg") and m.cells["sound"][0].endswith("cat_en_GB.ogg")
    assert m.cells["description"][2].endswith("dog_desc.ogg") and m.cells["description"][0] is None
    assert m.cells["image"][3].endswith("star.svg")
    assert (
        m.groups is not None and m.groups[0] == m.groups[1] != m.groups[2]
    )  # same caption, one group
    assert m.splits is not None and m.splits[0] == m.splits[1]
    no_svg = read_manifest(build_tuxpaint_manifest(tmp_path / "n.jsonl", root, include_svg=False))
    assert no_svg.cells["image"][3] is None and no_svg.cells["caption"][3] == "A star."


def test_split_is_fixed_by_seed(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "stamps")
    a = build_tuxpaint_manifest(tmp_path / "a.csv", root).read_text()
    assert build_tuxpaint_manifest(tmp_path / "b.csv", root).read_text() == a


def test_caption_skips_translations(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("\nfr.utf8=Un chat.\nA cat.\n", encoding="utf-8")
    assert read_caption(tmp_path / "x.txt") == "A cat."


def test_missing_package_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install tuxpaint-stamps-default"):
        build_tuxpaint_manifest(tmp_path / "m.csv", tmp_path / "nowhere")


@pytest.mark.skipif(not DEFAULT_ROOT.is_dir(), reason="tuxpaint-stamps-default not installed")
def test_real_package(tmp_path: Path) -> None:
    m = read_manifest(build_tuxpaint_manifest(tmp_path / "m.csv"))
    counts = {k: sum(c is not None for c in v) for k, v in m.cells.items()}
    assert len(m) > 900 and counts["caption"] > 900 and counts["image"] > 900
    assert 100 < counts["sound"] < len(m) and 30 < counts["description"] < 200
    splits = Counter(m.splits)
    assert splits["train"] > 0.7 * len(m) and splits["val"] > 0 and splits["test"] > 0
    assert all(not (i or "").endswith("_mirror.png") for i in m.cells["image"])
