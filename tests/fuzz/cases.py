"""Generated fuzz cases: one bad (or equivalently valid) input each, over every input family.

A case writes its input into its own folder and returns the command line to run. ``expect`` is
``"error"`` (exit non-zero, one line on stderr containing ``needle``, no complete-looking output)
or ``"same"`` (exit 0 with metrics identical to those of the valid input).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from modalign.features.store import write_features

from .base import DIMS, Base

Build = Callable[[Base, Path], list[str]]


@dataclass(frozen=True)
class Case:
    family: str
    name: str
    build: Build
    expect: str = "error"  # or "same"
    needle: str = ""  # what the one error line must contain (file, row or field)
    baseline: str = "train"  # which valid result a "same" case must equal: train or npz

    @property
    def id(self) -> str:
        return f"{self.family}/{self.name}"


def train(
    tmp: Path, *sets: str, config: Path | str | None = None, base: Base | None = None
) -> list[str]:
    cfg = str(config) if config is not None else str(base.config if base else "")
    argv = ["train", cfg, "--out", str(tmp / "run")]
    for s in sets:
        argv += ["--set", s]
    return argv


def eval_npz(tmp: Path, npz: Path, *extra: str) -> list[str]:
    return [
        "eval",
        "--embeddings",
        str(npz),
        "--out",
        str(tmp / "ev"),
        "--bootstrap",
        "10",
        "--no-report",
        *extra,
    ]


# ---------------------------------------------------------------------------------- manifests


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    fmt = path.suffix
    if fmt == ".csv":
        frame.to_csv(path, index=False)
    elif fmt == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif fmt == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path, index=False)
    return path


def _manifest_case(
    name: str,
    fmt: str,
    edit: Callable[[pd.DataFrame], pd.DataFrame],
    needle: str,
    expect: str = "error",
) -> Case:
    def build(base: Base, tmp: Path) -> list[str]:
        path = write_table(edit(base.frame.copy()), tmp / f"m{fmt}")
        return train(tmp, f"data.manifest={path}", base=base)

    return Case("manifest", f"{fmt[1:]}-{name}", build, expect, needle)


def _raw_manifest_case(
    name: str, suffix: str, text: str | bytes, needle: str, expect: str = "error"
) -> Case:
    def build(base: Base, tmp: Path) -> list[str]:
        path = tmp / f"m{suffix}"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text.replace("{header}", ",".join(base.frame.columns)))
        return train(tmp, f"data.manifest={path}", base=base)

    return Case("manifest", name, build, expect, needle)


def _dup_id(f: pd.DataFrame) -> pd.DataFrame:
    f.loc[5, "id"] = f.loc[2, "id"]
    return f


def _empty_id(f: pd.DataFrame) -> pd.DataFrame:
    f.loc[3, "id"] = ""
    return f


def _bad_split(f: pd.DataFrame) -> pd.DataFrame:
    f.loc[7, "split"] = "training"
    return f


def _unknown_cell(f: pd.DataFrame) -> pd.DataFrame:
    f.loc[4, "text"] = "no-such-text"
    return f


def _no_train(f: pd.DataFrame) -> pd.DataFrame:
    f["split"] = "test"
    return f


def _one_modality(f: pd.DataFrame) -> pd.DataFrame:
    return f.drop(columns=["text"])


def _few_text(f: pd.DataFrame) -> pd.DataFrame:
    f.loc[2:, "text"] = ""
    return f


def _spaces(f: pd.DataFrame) -> pd.DataFrame:
    for c in ("image", "text"):
        f[c] = "  " + f[c] + " "
    return f


def _split_first(f: pd.DataFrame) -> pd.DataFrame:
    return f[["split", "id", "image", "text"]]


def manifest_cases() -> list[Case]:
    cases = []
    for fmt in (".csv", ".tsv", ".jsonl", ".parquet"):
        cases += [
            _manifest_case("valid", fmt, lambda f: f, "", "same"),
            _manifest_case("duplicate-id", fmt, _dup_id, "duplicate id 'r2'"),
            _manifest_case("bad-split", fmt, _bad_split, "field 'split' is 'training'"),
            _manifest_case(
                "unknown-feature-id", fmt, _unknown_cell, "no features for 'no-such-text'"
            ),
            _manifest_case("no-train-rows", fmt, _no_train, "the train split is empty"),
            _manifest_case("one-modality", fmt, _one_modality, "at least two modalities"),
            _manifest_case("too-few-text-rows", fmt, _few_text, "fewer than data.min_rows"),
            _manifest_case("header-only", fmt, lambda f: f.iloc[:0], "no rows"),
        ]
        if fmt != ".parquet":  # parquet keeps the strings as written
            cases.append(_manifest_case("empty-id", fmt, _empty_id, "field 'id' is empty"))
    for fmt in (".csv", ".jsonl"):
        cases += [
            _manifest_case("padded-cells", fmt, _spaces, "", "same"),
            _manifest_case("split-column-first", fmt, _split_first, "", "same"),
        ]
    header = "id;image;text;split\nr0;img0;txt0;train\n"
    cases += [
        _raw_manifest_case("csv-semicolons", ".csv", header, "semicolon-separated"),
        _raw_manifest_case("csv-tabs", ".csv", header.replace(";", "\t"), "tab-separated"),
        _raw_manifest_case("csv-pipes", ".csv", header.replace(";", "|"), "pipe-separated"),
        _raw_manifest_case("tsv-commas", ".tsv", header.replace(";", ","), "comma-separated"),
        _raw_manifest_case("csv-empty-file", ".csv", "", "header) is empty"),
        _raw_manifest_case(
            "csv-duplicate-column",
            ".csv",
            "id,image,image,split\nr0,a,b,train\n",
            "'image' appears twice",
        ),
        _raw_manifest_case(
            "csv-ragged-row",
            ".csv",
            "{header}\nr0,img0,txt0,train\nr1,img1,txt1,train,extra\n",
            "line 3: 5 fields, but the header has 4",
        ),
        _raw_manifest_case(
            "csv-short-row", ".csv", "{header}\nr0,img0,txt0,train\nr1,img1\n", "line 3: 2 fields"
        ),
        _raw_manifest_case(
            "csv-unnamed-column",
            ".csv",
            "id,,text\nr0,img0,txt0\n",
            "column 2 of the header has no name",
        ),
        _raw_manifest_case(
            "csv-unclosed-quote", ".csv", '{header}\nr0,"img0,txt0,train\n', "m.csv"
        ),
        _raw_manifest_case("csv-binary", ".csv", bytes(range(256)) * 4, "m.csv"),
        _raw_manifest_case("csv-crlf", ".csv", "", "", "same"),  # replaced below
        _raw_manifest_case("jsonl-empty-file", ".jsonl", "", "no rows"),
        _raw_manifest_case(
            "jsonl-list-line",
            ".jsonl",
            '{"id": "a", "image": "img0", "text": "txt0"}\n["x"]\n',
            "line 2: expected a JSON object",
        ),
        _raw_manifest_case(
            "jsonl-broken-line",
            ".jsonl",
            '{"id": "a", "image": "img0", "text": "txt0"}\n{"id": \n{"id": "b"}\n',
            "line 2: not valid JSON",
        ),
        _raw_manifest_case(
            "jsonl-nested-cell",
            ".jsonl",
            '{"id": "a", "image": {"x": 1}, "text": "txt0"}\n',
            "line 1: field 'image' holds a dict",
        ),
        _raw_manifest_case("jsonl-number-line", ".jsonl", "3\n", "line 1: expected a JSON object"),
        _raw_manifest_case(
            "parquet-garbage", ".parquet", b"PAR1" + b"\x00" * 64, "cannot parse manifest"
        ),
        _raw_manifest_case("parquet-empty-file", ".parquet", b"", "cannot parse manifest"),
        _raw_manifest_case("unknown-suffix", ".xlsx", "a,b\n", "unknown manifest type '.xlsx'"),
    ]
    cases = [c for c in cases if c.name != "csv-crlf"] + [_crlf_case()]

    def folder_manifest(base: Base, tmp: Path) -> list[str]:
        (tmp / "dir.csv").mkdir()
        return train(tmp, f"data.manifest={tmp / 'dir.csv'}", base=base)

    def missing_manifest(base: Base, tmp: Path) -> list[str]:
        return train(tmp, f"data.manifest={tmp / 'nope.csv'}", base=base)

    cases += [
        Case("manifest", "path-is-a-folder", folder_manifest, needle="is a folder"),
        Case("manifest", "missing", missing_manifest, needle="manifest not found"),
    ]
    return cases


def _crlf_case() -> Case:
    def build(base: Base, tmp: Path) -> list[str]:
        path = tmp / "m.csv"
        path.write_bytes(base.frame.to_csv(index=False).replace("\n", "\r\n").encode())
        return train(tmp, f"data.manifest={path}", base=base)

    return Case("manifest", "csv-crlf", build, "same")


# ------------------------------------------------------------------------------ feature files


def _feature_case(
    name: str,
    write: Callable[[Base, Path], Path],
    needle: str,
    expect: str = "error",
    modality: str = "image",
) -> Case:
    def build(base: Base, tmp: Path) -> list[str]:
        path = write(base, tmp)
        return train(tmp, f"data.features.{modality}={path}", base=base)

    return Case("features", name, build, expect, needle)


def _npy(
    array: np.ndarray, ids: list[str] | None = None, raw_ids: str | None = None
) -> Callable[[Base, Path], Path]:
    def write(base: Base, tmp: Path) -> Path:
        path = tmp / "f.npy"
        np.save(path, array)
        keys = ids if ids is not None else list(base.frame["image"])
        (tmp / "f.ids.json").write_text(raw_ids if raw_ids is not None else json.dumps(keys))
        return path

    return write


def _bytes_file(name: str, data: bytes, ids: bool = True) -> Callable[[Base, Path], Path]:
    def write(base: Base, tmp: Path) -> Path:
        path = tmp / name
        path.write_bytes(data)
        if ids:
            (tmp / (name.split(".")[0] + ".ids.json")).write_text(
                json.dumps(list(base.frame["image"]))
            )
        return path

    return write


def _valid_as(
    suffix: str, dtype: type = np.float32, permute: bool = False, plain_ids: bool = False
) -> Callable[[Base, Path], Path]:
    def write(base: Base, tmp: Path) -> Path:
        ids, x = list(base.frame["image"]), base.arrays["image"]
        if permute:
            order = np.random.default_rng(5).permutation(len(ids))
            ids, x = [ids[i] for i in order], x[order]
        path = tmp / f"f{suffix}"
        if suffix == ".safetensors" or (dtype is np.float32 and not plain_ids):
            write_features(path, ids, x)
        else:
            np.save(path, x.astype(dtype))
            (tmp / "f.ids.json").write_text(json.dumps(ids if plain_ids else {"ids": ids}))
        return path

    return write


def _safetensors(
    tensors: dict[str, np.ndarray], meta: dict[str, str] | None
) -> Callable[[Base, Path], Path]:
    def write(base: Base, tmp: Path) -> Path:
        from safetensors.numpy import save_file

        path = tmp / "f.safetensors"
        save_file(tensors, str(path), metadata=meta)
        return path

    return write


def _truncated(suffix: str, keep: float) -> Callable[[Base, Path], Path]:
    def write(base: Base, tmp: Path) -> Path:
        path = _valid_as(suffix)(base, tmp)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])
        return path

    return write


def _stale_ids(base: Base, tmp: Path) -> Path:
    path = _valid_as(".npy")(base, tmp)
    ids = (tmp / "f.ids.json").read_text()
    write_features(path, list(base.frame["image"]), base.arrays["image"] + 1)  # a newer array...
    (tmp / "f.ids.json").write_text(ids)  # ...beside the ids of the old one
    return path


def _ids_folder(base: Base, tmp: Path) -> Path:
    path = tmp / "f.npy"
    np.save(path, base.arrays["image"])
    (tmp / "f.ids.json").mkdir()
    return path


def _npy_folder(base: Base, tmp: Path) -> Path:
    (tmp / "f.npy").mkdir()
    (tmp / "f.ids.json").write_text(json.dumps(list(base.frame["image"])))
    return tmp / "f.npy"


def _npz_named_npy(base: Base, tmp: Path) -> Path:
    path = tmp / "f.npy"
    with open(path, "wb") as f:
        np.savez(f, a=base.arrays["image"])
    (tmp / "f.ids.json").write_text(json.dumps(list(base.frame["image"])))
    return path


def feature_cases() -> list[Case]:
    n, d = 40, DIMS["image"]
    good = np.random.default_rng(2).standard_normal((n, d)).astype(np.float32)
    nan = good.copy()
    nan[7, 2] = np.nan
    inf = good.copy()
    inf[9, 0] = -np.inf
    ids = [f"img{i}" for i in range(n)]
    meta = {"ids": json.dumps(ids)}
    cases = [
        _feature_case("npy-valid-float16", _valid_as(".npy", np.float16), "", "same"),
        _feature_case("npy-valid-float64", _valid_as(".npy", np.float64), "", "same"),
        _feature_case("npy-valid-plain-ids", _valid_as(".npy", plain_ids=True), "", "same"),
        _feature_case("npy-valid-rows-permuted", _valid_as(".npy", permute=True), "", "same"),
        _feature_case("safetensors-valid", _valid_as(".safetensors"), "", "same"),
        _feature_case(
            "safetensors-valid-permuted", _valid_as(".safetensors", permute=True), "", "same"
        ),
        _feature_case("npy-zero-bytes", _bytes_file("f.npy", b""), "the file is empty"),
        _feature_case(
            "npy-garbage", _bytes_file("f.npy", b"\x93NUMPY garbage" * 10), "not a readable .npy"
        ),
        _feature_case("npy-text", _bytes_file("f.npy", b"1,2,3\n4,5,6\n"), "not a readable .npy"),
        _feature_case("npy-npz-inside", _npz_named_npy, "not a .npy array"),
        _feature_case("npy-is-a-folder", _npy_folder, "f.npy"),
        _feature_case("npy-1d", _npy(good[:, 0]), "features have shape (40,)"),
        _feature_case("npy-3d", _npy(good[:, :, None]), "features have shape (40, 6, 1)"),
        _feature_case("npy-no-columns", _npy(np.zeros((n, 0), np.float32)), "no feature columns"),
        _feature_case("npy-wrong-rows", _npy(good[:30]), "but there are 40 ids"),
        _feature_case(
            "npy-object", _npy(np.array([[1, "a"]] * n, dtype=object)), "not a readable .npy"
        ),
        _feature_case("npy-nan", _npy(nan), "'img7'"),
        _feature_case("npy-inf", _npy(inf), "'img9'"),
        _feature_case("ids-missing", _npy(good, raw_ids=None), "ids file", expect="error"),
        _feature_case("ids-broken-json", _npy(good, raw_ids='["img0", '), "ids are not valid JSON"),
        _feature_case(
            "ids-not-strings", _npy(good, raw_ids=json.dumps(list(range(n)))), "list of strings"
        ),
        _feature_case("ids-duplicate", _npy(good, ids=["img0"] * n), "duplicate id 'img0'"),
        _feature_case("ids-wrong-length", _npy(good, ids=ids[:39]), "but there are 39 ids"),
        _feature_case("ids-is-a-folder", _ids_folder, "cannot read the ids"),
        _feature_case("ids-stale-fingerprint", _stale_ids, "written for another version"),
        _feature_case(
            "unknown-suffix", _bytes_file("f.txt", b"1 2 3"), "unknown feature file type"
        ),
        _feature_case("missing-file", lambda b, t: t / "nope.npy", "feature file not found"),
        _feature_case(
            "safetensors-zero-bytes",
            _bytes_file("f.safetensors", b"", ids=False),
            "not a readable .safetensors",
        ),
        _feature_case(
            "safetensors-garbage",
            _bytes_file("f.safetensors", b"\xff" * 100, ids=False),
            "not a readable .safetensors",
        ),
        _feature_case(
            "safetensors-truncated", _truncated(".safetensors", 0.6), "not a readable .safetensors"
        ),
        _feature_case(
            "safetensors-header-only",
            _truncated(".safetensors", 0.05),
            "not a readable .safetensors",
        ),
        _feature_case(
            "safetensors-no-features", _safetensors({"x": good}, meta), "no tensor named 'features'"
        ),
        _feature_case(
            "safetensors-no-ids", _safetensors({"features": good}, None), "no 'ids' entry"
        ),
        _feature_case(
            "safetensors-broken-ids",
            _safetensors({"features": good}, {"ids": "[oops"}),
            "ids are not valid JSON",
        ),
        _feature_case("safetensors-nan", _safetensors({"features": nan}, meta), "'img7'"),
        _feature_case("npy-truncated-half", _truncated(".npy", 0.5), "not a readable .npy"),
        _feature_case("npy-truncated-header", _truncated(".npy", 0.05), "not a readable .npy"),
    ]
    # the ids-missing case: no ids file at all
    cases = [c for c in cases if c.name != "ids-missing"] + [
        _feature_case("ids-missing", _no_ids(good), "not found beside it")
    ]
    for dtype in (np.int32, np.int64, np.uint8, np.bool_, np.complex64, np.complex128):
        name = np.dtype(dtype).name
        cases.append(
            _feature_case(
                f"npy-{name}",
                _npy(np.ones((n, d), dtype)),
                f"must be floats (float16, float32 or float64), got {name}",
            )
        )
    for dtype in (np.int32, np.bool_):
        name = np.dtype(dtype).name
        cases.append(
            _feature_case(
                f"safetensors-{name}",
                _safetensors({"features": np.ones((n, d), dtype)}, meta),
                f"got {name}",
            )
        )
    return cases


def _no_ids(array: np.ndarray) -> Callable[[Base, Path], Path]:
    def write(base: Base, tmp: Path) -> Path:
        np.save(tmp / "f.npy", array)
        return tmp / "f.npy"

    return write


# ------------------------------------------------------------------------ configs and --set

BAD_SETS: dict[str, list[tuple[str, str]]] = {
    "train.lr": [
        ("0", "train.lr"),
        ("-1", "train.lr"),
        ("inf", "train.lr"),
        ("nan", "train.lr"),
        ("abc", "'train.lr'"),
    ],
    "train.weight_decay": [
        ("-0.1", "train.weight_decay"),
        ("inf", "train.weight_decay"),
        ("nan", "train.weight_decay"),
    ],
    "train.grad_clip": [
        ("-1", "train.grad_clip"),
        ("0", "train.grad_clip"),
        ("nan", "train.grad_clip"),
    ],
    "train.epochs": [("-1", "train.epochs"), ("1.5", "'train.epochs'"), ("x", "'train.epochs'")],
    "train.batch_size": [("0", "train.batch_size"), ("-3", "train.batch_size")],
    "train.accumulate": [("0", "train.accumulate")],
    "train.log_every": [("0", "train.log_every")],
    "train.warmup_steps": [("-1", "train.warmup_steps")],
    "train.min_lr_ratio": [("2", "train.min_lr_ratio"), ("-0.5", "train.min_lr_ratio")],
    "train.chunk_size": [("0", "train.chunk_size")],
    "train.num_workers": [("-1", "train.num_workers")],
    "train.device": [("tpu", "train.device")],
    "train.tensorboard": [("maybe", "'train.tensorboard'")],
    "train.early_stopping.patience": [("0", "patience")],
    "train.early_stopping.mode": [("maybe", "'train.early_stopping.mode'")],
    "model.embed_dim": [("0", "model.embed_dim"), ("-4", "model.embed_dim")],
    "model.head.dropout": [
        ("5", "model.head.dropout"),
        ("-0.1", "model.head.dropout"),
        ("1", "model.head.dropout"),
    ],
    "model.head.hidden_dim": [("0", "model.head.hidden_dim")],
    "model.head.kind": [("conv", "'model.head.kind'")],
    "model.head.init": [("magic", "model.head.init 'magic' is unknown")],
    "model.head.init_reg": [("-1", "model.head.init_reg")],
    "loss.name": [("cosine", "loss.name 'cosine' is unknown")],
    "loss.max_scale": [("0", "loss.max_scale"), ("inf", "loss.max_scale")],
    "loss.init_temperature": [("0", "loss.init_temperature"), ("-1", "loss.init_temperature")],
    "loss.tile_size": [("0", "loss.tile_size")],
    "loss.pairs": [
        ("[[image, image]]", "aligns a modality with itself"),
        ("[[image, audio]]", "'audio'"),
        ("[1]", "loss.pairs"),
    ],
    "eval.ks": [
        ("[a]", "eval.ks"),
        ("[0]", "eval.ks"),
        ("[]", "eval.ks"),
        ("3", "eval.ks"),
        ("[1.5]", "eval.ks"),
        ("[true]", "eval.ks"),
    ],
    "eval.splits": [("[bogus]", "eval.splits"), ("[]", "eval.splits")],
    "eval.chunk_size": [("0", "eval.chunk_size")],
    "data.split_fractions": [
        ("{train: 0, val: 0, test: 0}", "data.split_fractions"),
        ("{train: -1}", "split_fractions.train"),
        ("{training: 1}", "split_fractions.training"),
    ],
    "data.min_rows": [("0", "data.min_rows")],
    "data.modalities": [("[image, sound]", "no column 'sound'")],
    "model.encoders.text.name": [("bogus", "model.encoders.text.name 'bogus' is unknown")],
    "model.encoders.audio.name": [("mlp", "model.encoders.audio")],
}

GOOD_SETS = [
    ("lr-spelling", ["train.lr=1e-2"]),
    ("bool-yes", ["train.tensorboard=no"]),
    ("same-ks", ["eval.ks=[1, 5]"]),
    ("null-chunk", ["train.chunk_size=null"]),
]


def _set_case(key: str, value: str, needle: str) -> Case:
    def build(base: Base, tmp: Path) -> list[str]:
        return train(tmp, f"{key}={value}", base=base)

    return Case("config", f"set-{key}={value}", build, "error", needle)


def _yaml_case(name: str, text: str, needle: str) -> Case:
    def build(base: Base, tmp: Path) -> list[str]:
        path = tmp / "c.yaml"
        path.write_text(text)
        return train(tmp, config=path)

    return Case("config", f"yaml-{name}", build, "error", needle)


def _not_utf8(base: Base, tmp: Path) -> list[str]:
    (tmp / "c.yaml").write_bytes(b"name: \xff\xfe\n")
    return train(tmp, config=tmp / "c.yaml")


def config_cases() -> list[Case]:
    cases = [_set_case(k, v, needle) for k, items in BAD_SETS.items() for v, needle in items]
    for name, sets in GOOD_SETS:
        cases.append(
            Case("config", f"set-valid-{name}", lambda b, t, s=sets: train(t, *s, base=b), "same")
        )
    cases += [
        Case(
            "config",
            "set-unknown-key",
            lambda b, t: train(t, "train.lrr=1", base=b),
            needle="unknown key 'train.lrr'",
        ),
        Case(
            "config",
            "set-no-equals",
            lambda b, t: train(t, "train.lr", base=b),
            needle="not of the form",
        ),
        Case(
            "config", "set-section-value", lambda b, t: train(t, "train=3", base=b), needle="train"
        ),
        Case(
            "config",
            "set-value-as-section",
            lambda b, t: train(t, "train.lr.x=3", base=b),
            needle="'train.lr.x'",
        ),
        Case(
            "config",
            "set-missing-feature",
            lambda b, t: train(t, f"data.features.text={t / 'x.npy'}", base=b),
            needle="x.npy: feature file not found",
        ),
        _yaml_case("invalid", "train: [1, 2\n", "invalid YAML"),
        _yaml_case("top-level-list", "- 1\n- 2\n", "must be a mapping of sections"),
        _yaml_case("section-list", "train: [1]\n", "train = [1]: must be a section"),
        _yaml_case("empty", "", "data.manifest is not set"),
        _yaml_case("unknown-section", "trian: {}\n", "unknown key 'trian'"),
        _yaml_case("binary", "\x00\x01\x02\x7f", "c.yaml"),
        Case(
            "config",
            "yaml-missing-file",
            lambda b, t: train(t, config=t / "none.yaml"),
            needle="config file not found",
        ),
        Case(
            "config",
            "yaml-is-a-folder",
            lambda b, t: train(t, config=t),
            needle="is a folder, not a config file",
        ),
        Case("config", "yaml-not-utf8", _not_utf8, needle="invalid YAML"),
    ]
    return cases


# ------------------------------------------------------------------------------- eval .npz


def _npz_case(
    name: str,
    edit: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    needle: str,
    expect: str = "error",
    extra: tuple[str, ...] = (),
) -> Case:
    def build(base: Base, tmp: Path) -> list[str]:
        path = tmp / "e.npz"
        np.savez(path, **edit({k: v.copy() for k, v in base.npz_arrays.items()}))  # type: ignore[arg-type]
        return eval_npz(tmp, path, *extra)

    return Case("eval-npz", name, build, expect, needle, baseline="npz")


def _npz_bytes_case(name: str, data: Callable[[Base], bytes], needle: str) -> Case:
    def build(base: Base, tmp: Path) -> list[str]:
        path = tmp / "e.npz"
        path.write_bytes(data(base))
        return eval_npz(tmp, path)

    return Case("eval-npz", name, build, "error", needle, baseline="npz")


def _with(**changes: object) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    def edit(a: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for k, v in changes.items():
            if v is None:
                a.pop(k)
            else:
                a[k] = v(a) if callable(v) else v  # type: ignore[assignment]
        return a

    return edit


def _row_nan(a: dict[str, np.ndarray]) -> np.ndarray:
    x = a["text"].copy()
    x[3, 1] = np.nan
    return x


def _row_zero(a: dict[str, np.ndarray]) -> np.ndarray:
    x = a["text"].copy()
    x[4] = 0
    return x


def npz_cases() -> list[Case]:
    ids_dup = np.array([f"q{i}" for i in range(29)] + ["q0"])
    cases = [
        _npz_case(
            "valid-float64", _with(image=lambda a: a["image"].astype(np.float64)), "", "same"
        ),
        _npz_case("valid-scaled-rows", _with(text=lambda a: a["text"] * 2), "", "same"),
        _npz_case(
            "valid-explicit-ids", _with(id=np.array([str(i) for i in range(30)])), "", "same"
        ),
        _npz_case(
            "valid-group-int32", _with(group=lambda a: a["group"].astype(np.int32)), "", "same"
        ),
        _npz_case(
            "zero-rows",
            _with(
                image=np.zeros((0, 5), np.float32),
                text=np.zeros((0, 5), np.float32),
                group=np.zeros(0, int),
            ),
            "no rows or no columns",
        ),
        _npz_case(
            "zero-columns",
            _with(image=np.zeros((30, 0), np.float32), text=np.zeros((30, 0), np.float32)),
            "no rows or no columns",
        ),
        _npz_case(
            "all-nan-modality",
            _with(text=np.full((30, 5), np.nan, np.float32)),
            "'text' is all NaN",
        ),
        _npz_case("nan-in-row", _with(text=_row_nan), "'text' row 3 mixes numbers with NaN"),
        _npz_case("zero-row", _with(text=_row_zero), "'text' row 4 is all zeros"),
        _npz_case("duplicate-ids", _with(id=ids_dup), "duplicate id 'q0'"),
        _npz_case("ids-wrong-length", _with(id=np.array(["a", "b"])), "array 'id' has shape (2,)"),
        _npz_case("negative-labels", _with(label=np.array([0, 1, -3] * 10)), "label' row 2 is -3"),
        _npz_case("float-labels", _with(label=np.zeros(30)), "'label' must be an integer"),
        _npz_case(
            "label-out-of-range",
            _with(label=np.array([0, 1, 5] * 10), classes=np.eye(3, 5, dtype=np.float32)),
            "label 5 is out of range",
        ),
        _npz_case(
            "classes-no-labels", _with(classes=np.eye(3, 5, dtype=np.float32)), "no 'label' array"
        ),
        _npz_case(
            "classes-wrong-width",
            _with(label=np.array([0, 1, 2] * 10), classes=np.eye(3, 4, dtype=np.float32)),
            "array 'classes'",
        ),
        _npz_case(
            "classes-strings",
            _with(label=np.array([0, 1, 2] * 10), classes=np.array([["a"] * 5] * 3)),
            "'classes' must be floats",
        ),
        _npz_case(
            "int-embeddings",
            _with(text=lambda a: (a["text"] * 10).astype(np.int32)),
            "'text' must be a float (N, D)",
        ),
        _npz_case(
            "complex-embeddings",
            _with(text=lambda a: a["text"].astype(np.complex64)),
            "'text' must be a float (N, D)",
        ),
        _npz_case("bool-embeddings", _with(text=lambda a: a["text"] > 0), "'text' must be a float"),
        _npz_case(
            "one-d-embeddings",
            _with(text=lambda a: a["text"][:, 0]),
            "'text' must be a float (N, D)",
        ),
        _npz_case("row-mismatch", _with(text=lambda a: a["text"][:20]), "has 20 rows"),
        _npz_case("width-mismatch", _with(text=lambda a: a["text"][:, :4]), "must share a width"),
        _npz_case("one-modality", _with(text=None), "nothing to measure"),
        _npz_case(
            "group-wrong-shape", _with(group=np.arange(10)), "'group' must be an integer (30,)"
        ),
        _npz_case("group-float", _with(group=np.zeros(30)), "'group' must be an integer"),
        _npz_case(
            "class-names-missing",
            _with(label=np.array([0, 1, 2] * 10), classes=np.eye(3, 5, dtype=np.float32)),
            "class names file not found",
            extra=("--class-names", "/nonexistent/names.txt"),
        ),
        _npz_bytes_case("zero-bytes", lambda b: b"", "cannot read as .npz"),
        _npz_bytes_case("garbage", lambda b: b"\x00garbage" * 50, "cannot read as .npz"),
        _npz_bytes_case(
            "truncated",
            lambda b: b.npz.read_bytes()[: len(b.npz.read_bytes()) // 2],
            "cannot read as .npz",
        ),
        _npz_bytes_case(
            "truncated-tail", lambda b: b.npz.read_bytes()[:-30], "cannot read as .npz"
        ),
        _npz_bytes_case("plain-npy", _npy_bytes, "a single .npy array"),
        _npz_bytes_case("pickled-object", _pickled_npz, "object arrays"),
    ]

    def folder(base: Base, tmp: Path) -> list[str]:
        (tmp / "e.npz").mkdir()
        return eval_npz(tmp, tmp / "e.npz")

    cases += [
        Case("eval-npz", "path-is-a-folder", folder, needle="is a folder", baseline="npz"),
        Case(
            "eval-npz",
            "missing",
            lambda b, t: eval_npz(t, t / "none.npz"),
            needle="none.npz: not found",
            baseline="npz",
        ),
    ]
    return cases


def _npy_bytes(base: Base) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, base.npz_arrays["image"])
    return buf.getvalue()


def _pickled_npz(base: Base) -> bytes:
    import io

    buf = io.BytesIO()
    arrays = dict(base.npz_arrays)
    arrays["text"] = np.array([None] * 30, dtype=object)
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


# ---------------------------------------------------------------------------- command line


def _args_case(
    name: str, build: Build, needle: str, expect: str = "error", baseline: str = "train"
) -> Case:
    return Case("cli-args", name, build, expect, needle, baseline)


def _evaluated_run(base: Base, tmp: Path) -> Path:
    """A copy of the trained valid run (cheap: no training per case)."""
    import shutil

    run = tmp / "run"
    shutil.copytree(base.run, run)
    return run


def _eval_run(*extra: str) -> Build:
    def build(base: Base, tmp: Path) -> list[str]:
        return ["eval", str(_evaluated_run(base, tmp)), "--bootstrap", "5", "--no-report", *extra]

    return build


def _out_is_file(base: Base, tmp: Path) -> list[str]:
    (tmp / "out").write_text("x")
    return ["eval", "--embeddings", str(base.npz), "--out", str(tmp / "out")]


def _train_out_is_file(base: Base, tmp: Path) -> list[str]:
    (tmp / "run").write_text("x")
    return train(tmp, base=base)


def _compare_incomplete(base: Base, tmp: Path) -> list[str]:
    run = _evaluated_run(base, tmp)
    (run / "eval_complete.json").unlink()
    return ["compare", str(base.run), str(run)]


def _compare_tampered(base: Base, tmp: Path) -> list[str]:
    run = _evaluated_run(base, tmp)
    (run / "per_query.npz").write_bytes((run / "per_query.npz").read_bytes()[:-10])
    return ["compare", str(base.run), str(run)]


def _synth_under_file(base: Base, tmp: Path) -> list[str]:
    (tmp / "file").write_text("x")
    return ["synth", str(tmp / "file" / "data"), "--rows", "20"]


def cli_cases() -> list[Case]:
    cases = [
        _args_case("eval-ks-zero", _eval_run("--ks", "0"), "--ks 0"),
        _args_case("eval-ks-negative", _eval_run("--ks", "1", "-2"), "--ks -2"),
        _args_case("eval-ks-text", _eval_run("--ks", "a"), "invalid int value: 'a'"),
        _args_case("eval-bootstrap-negative", _eval_run("--bootstrap", "-3"), "--bootstrap -3"),
        _args_case("eval-chunk-zero", _eval_run("--chunk-size", "0"), "--chunk-size 0"),
        _args_case("eval-splits-bogus", _eval_run("--splits", "bogus"), "--splits 'bogus'"),
        _args_case(
            "eval-class-names-missing",
            _eval_run("--class-names", "/nonexistent/c.txt"),
            "class names file not found",
        ),
        _args_case("eval-unknown-option", _eval_run("--fast"), "unrecognized arguments: --fast"),
        _args_case(
            "eval-both-inputs",
            lambda b, t: ["eval", str(b.run), "--embeddings", str(b.npz)],
            "either a run folder or --embeddings",
        ),
        _args_case("eval-nothing", lambda b, t: ["eval"], "either a run folder or --embeddings"),
        _args_case(
            "eval-embeddings-no-out",
            lambda b, t: ["eval", "--embeddings", str(b.npz)],
            "needs --out",
        ),
        _args_case("eval-run-missing", lambda b, t: ["eval", str(t / "nope")], "not a run folder"),
        _args_case("eval-run-not-a-run", lambda b, t: ["eval", str(t)], "not a run folder"),
        _args_case("eval-out-is-a-file", _out_is_file, "exists and is not a folder"),
        _args_case("train-out-is-a-file", _train_out_is_file, "exists and is not a folder"),
        _args_case(
            "train-resume-nothing",
            lambda b, t: [*train(t, base=b), "--resume"],
            "nothing to resume",
        ),
        _args_case(
            "train-into-finished-run",
            lambda b, t: [*train(t, base=b)[:2], "--out", str(_evaluated_run(b, t))],
            "already holds a run",
        ),
        _args_case(
            "train-no-config",
            lambda b, t: ["train"],
            "the following arguments are required: config",
        ),
        _args_case("unknown-command", lambda b, t: ["fly"], "invalid choice: 'fly'"),
        _args_case(
            "compare-missing",
            lambda b, t: ["compare", str(t / "a"), str(t / "b")],
            "has no finished evaluation",
        ),
        _args_case("compare-incomplete-eval", _compare_incomplete, "has no finished evaluation"),
        _args_case("compare-tampered-eval", _compare_tampered, "does not match the evaluation"),
        _args_case(
            "compare-bootstrap-zero",
            lambda b, t: ["compare", str(b.run), str(b.run), "--bootstrap", "0"],
            "--bootstrap 0",
        ),
        _args_case(
            "embed-shard-zero",
            lambda b, t: ["embed", "--manifest", str(b.manifest), "--shard-size", "0"],
            "--shard-size 0",
        ),
        _args_case(
            "embed-batch-zero",
            lambda b, t: ["embed", "--manifest", str(b.manifest), "--batch-size", "0"],
            "--batch-size 0",
        ),
        _args_case(
            "embed-no-manifest",
            lambda b, t: ["embed", "--encoder", "text=sentence_transformer"],
            "no manifest",
        ),
        _args_case(
            "embed-bad-encoder-flag",
            lambda b, t: ["embed", "--manifest", str(b.manifest), "--encoder", "text"],
            "expected KEY=VALUE",
        ),
        _args_case(
            "embed-nothing",
            lambda b, t: ["embed", "--manifest", str(b.manifest)],
            "nothing to embed",
        ),
        _args_case("eval-run-valid", _eval_run(), "", "same"),
        _args_case("synth-under-a-file", _synth_under_file, "Not a directory"),
    ]
    return cases


def checkpoint_cases() -> list[Case]:
    """A run folder's own files damaged: checkpoints and the metrics log, on --resume and eval."""

    def damaged(name: str, data: Callable[[bytes], bytes], *cmd: str) -> Build:
        def build(base: Base, tmp: Path) -> list[str]:
            run = _evaluated_run(base, tmp)
            (run / name).write_bytes(data((run / name).read_bytes()))
            if cmd and cmd[0] == "eval":
                return ["eval", str(run), "--bootstrap", "5", "--no-report"]
            return [*train(tmp, base=base), "--resume", *cmd]

        return build

    def crafted(base: Base, tmp: Path) -> list[str]:
        run = _evaluated_run(base, tmp)
        (run / "model.safetensors").unlink()  # a run folder from before model.safetensors
        torch.save({"model": Marker(str(tmp / "pwned"))}, run / "best.pt")
        return ["eval", str(run), "--bootstrap", "5", "--no-report"]

    def crafted_last(base: Base, tmp: Path) -> list[str]:
        run = _evaluated_run(base, tmp)
        torch.save({"model": Marker(str(tmp / "pwned"))}, run / "last.pt")
        return [*train(tmp, "train.epochs=2", base=base), "--resume"]

    def resume_other_model(base: Base, tmp: Path) -> list[str]:
        _evaluated_run(base, tmp)
        return [*train(tmp, "model.embed_dim=12", "train.epochs=2", base=base), "--resume"]

    cases = [
        Case(
            "checkpoint",
            "run-config-damaged-resume",
            damaged("config.yaml", lambda b: b"[: x"),
            expect="same",
        ),
        Case("checkpoint", "best-pt-pickled-object", crafted, needle="refused"),
        Case("checkpoint", "last-pt-pickled-object-resume", crafted_last, needle="refused"),
        Case("checkpoint", "resume-another-model", resume_other_model, needle="'heads.image"),
    ]
    for name in ("last.pt", "model.safetensors"):
        cmd = ("eval",) if name == "model.safetensors" else ()
        cases += [
            Case(
                "checkpoint",
                f"{name}-garbage",
                damaged(name, lambda b: b"\x80\x04garbage" * 20, *cmd),
                needle=name,
            ),
            Case(
                "checkpoint", f"{name}-zero-bytes", damaged(name, lambda b: b"", *cmd), needle=name
            ),
            Case(
                "checkpoint",
                f"{name}-truncated",
                damaged(name, lambda b: b[: len(b) // 2], *cmd),
                needle=name,
            ),
            Case(
                "checkpoint", f"{name}-text", damaged(name, lambda b: b"hello", *cmd), needle=name
            ),
        ]
    cases += [
        Case(
            "checkpoint",
            "metrics-jsonl-broken-middle",
            damaged("metrics.jsonl", lambda b: b.replace(b"}\n", b"\n", 1)),
            needle="metrics.jsonl, line 1",
        ),
        Case(
            "checkpoint",
            "metrics-jsonl-list-line",
            damaged("metrics.jsonl", lambda b: b"[1, 2]\n" + b),
            needle="metrics.jsonl, line 1: expected a JSON object",
        ),
    ]
    return cases


class Marker:
    """A pickled object that would create a file if it were ever unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (Path(self.path), "code ran"))  # type: ignore[return-value]


def all_cases() -> list[Case]:
    cases = (
        manifest_cases()
        + feature_cases()
        + config_cases()
        + npz_cases()
        + cli_cases()
        + checkpoint_cases()
    )
    ids = [c.id for c in cases]
    dup = [i for i, n in itertools.groupby(sorted(ids)) if len(list(n)) > 1]
    assert not dup, dup
    return cases
