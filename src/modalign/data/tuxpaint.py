"""Built-in dataset ``tuxpaint``: Tux Paint's clip-art stamps with captions, sounds and spoken descriptions.

Reads the Debian package ``tuxpaint-stamps-default`` (GPL-2; read from its folder at run time,
never copied) and writes a manifest with one row per stamp and the modality columns

* ``image``: ``NAME.png``, or ``NAME.svg`` when there is no PNG (about 1,000 stamps);
* ``caption``: the first line of ``NAME.txt`` (English; the other lines are translations);
* ``sound``: ``NAME.ogg`` (or ``NAME.wav``), else the British English ``NAME_en_GB.ogg`` that
  the letters and digits have (about 540);
* ``description``: the English spoken description ``NAME_desc.ogg`` (about 65).

Oddities handled: ``NAME_mirror.png`` files are pre-mirrored renders of another stamp, not
stamps (left out); a few sounds (``wallaby_desc.ogg``, ``mosquito.ogg``) have no stamp (left
out); some captions are shared by several stamps ("A flower." six times), so stamps with the same
caption share a ``group`` (positives of each other) and always fall in the same split. The split
(80/10/10 train/val/test) is a seeded hash of the group, so it does not move when stamps are added.

Example:
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "animals").mkdir()
    >>> _ = (root / "animals" / "cat.txt").write_text("A cat.\\nfr.utf8=Un chat.\\n")
    >>> _ = (root / "animals" / "cat.png").write_bytes(b"")
    >>> rows = scan_stamps(root)
    >>> rows[0]["id"], rows[0]["caption"], rows[0]["image"].endswith("cat.png")
    ('animals/cat', 'A cat.', True)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from collections import Counter
from pathlib import Path

from modalign.errors import DataError
from modalign.io import write_atomic

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("/usr/share/tuxpaint/stamps")
MODALITIES = ("image", "caption", "sound", "description")
SPLIT_FRACTIONS = (("train", 0.8), ("val", 0.1), ("test", 0.1))
INSTALL_HINT = "sudo apt-get install tuxpaint-stamps-default"


def read_caption(txt: Path) -> str | None:
    """The English caption: the first non-empty line that is not a ``xx.utf8=`` translation."""
    text = txt.read_bytes().decode("utf-8", errors="replace")
    for line in text.splitlines():
        line = line.strip()
        if line and ".utf8=" not in line:
            return line
    return None


def _all_files(root: Path) -> set[Path]:
    return {Path(folder) / name for folder, _, names in os.walk(root) for name in names}


def scan_stamps(root: Path, include_svg: bool = True) -> list[dict[str, str | None]]:
    """One record per stamp under ``root``: id (path without suffix) and the four modality cells."""
    files = _all_files(root)  # one walk, then set look-ups: ~9,000 files

    def first(*candidates: Path) -> Path | None:
        return next((p for p in candidates if p in files), None)

    stems = sorted({p.with_suffix("") for p in files if p.suffix in (".png", ".svg", ".txt")})
    rows: list[dict[str, str | None]] = []
    for stem in stems:
        if stem.name.endswith("_mirror") and stem.with_suffix(".txt") not in files:
            continue  # a pre-mirrored render of another stamp
        svg = stem.with_suffix(".svg") if include_svg else None
        image = first(stem.with_suffix(".png"), *([svg] if svg else []))
        txt = stem.with_suffix(".txt")
        caption = read_caption(txt) if txt in files else None
        if image is None and caption is None:
            continue
        sound = first(
            *(
                stem.parent / f"{stem.name}{tail}"
                for tail in (".ogg", ".wav", "_en_GB.ogg", "_en.ogg")
            )
        )
        desc = first(*(stem.parent / f"{stem.name}_desc{tail}" for tail in (".ogg", ".wav")))
        rows.append(
            {
                "id": stem.relative_to(root).as_posix(),
                "image": str(image) if image else None,
                "caption": caption,
                "sound": str(sound) if sound else None,
                "description": str(desc) if desc else None,
            }
        )
    return rows


def split_of(key: str, seed: int) -> str:
    """``train``/``val``/``test`` from a hash of (seed, key), fractions 0.8/0.1/0.1."""
    u = (
        int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest(), "big")
        / 2.0**64
    )
    edge = 0.0
    for name, fraction in SPLIT_FRACTIONS:
        edge += fraction
        if u < edge:
            return name
    return SPLIT_FRACTIONS[-1][0]


def build_tuxpaint_manifest(
    out_path: str | Path,
    root: str | Path = DEFAULT_ROOT,
    seed: int = 0,
    include_svg: bool | None = None,
) -> Path:
    """Scan the Tux Paint stamps and write a manifest (``.csv`` or ``.jsonl``, by suffix).

    Args:
        out_path: manifest file to write (atomically); cells hold absolute paths into ``root``.
        root: the stamps folder of ``tuxpaint-stamps-default``.
        seed: seed of the train/val/test split (by caption group).
        include_svg: use SVG-only stamps' images; default: when an SVG rasteriser is installed.

    Returns:
        ``out_path``. Columns: id, image, caption, sound, description, group, split.
    """
    root, out_path = Path(root), Path(out_path)
    if not root.is_dir():
        raise DataError(f"Tux Paint stamps not found at {root}; install them with: {INSTALL_HINT}")
    if include_svg is None:
        include_svg = any(importlib.util.find_spec(m) is not None for m in ("cairosvg", "resvg_py"))
    rows = scan_stamps(root, include_svg)
    if not rows:
        raise DataError(f"{root}: no stamps found; reinstall them with: {INSTALL_HINT}")
    for row in rows:
        # stamps with one caption are one group; a stamp without caption is its own group
        row["group"] = (
            "caption:" + row["caption"].lower() if row["caption"] else "stamp:" + str(row["id"])
        )
        row["split"] = split_of(str(row["group"]), seed)
    _write_rows(out_path, rows)
    counts = {m: sum(r[m] is not None for r in rows) for m in MODALITIES}
    log.info(
        "tuxpaint: %d stamps, %s, splits %s",
        len(rows),
        counts,
        dict(Counter(r["split"] for r in rows)),
    )
    return out_path


def _write_rows(path: Path, rows: list[dict[str, str | None]]) -> None:
    columns = ["id", *MODALITIES, "group", "split"]
    if path.suffix == ".jsonl":
        write_atomic(
            path,
            lambda f: f.writelines(
                json.dumps({c: r[c] for c in columns}, ensure_ascii=False) + "\n" for r in rows
            ),
        )
        return
    if path.suffix != ".csv":
        raise DataError(f"{path}: the tuxpaint manifest is written as .csv or .jsonl")
    import csv

    def write(f: object) -> None:
        writer = csv.writer(f)  # type: ignore[arg-type]
        writer.writerow(columns)
        writer.writerows([["" if r[c] is None else r[c] for c in columns] for r in rows])

    write_atomic(path, write)
