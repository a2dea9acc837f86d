"""The HTTP API over a real socket: answers, limits, and >= 200 malformed requests without a 5xx."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest

pytest.importorskip("hypothesis", reason="hypothesis not installed (dev extra)")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def test_health_search_items_media(server):
    status, _, body = server.request("GET", "/health")
    health = json.loads(body)
    assert status == 200 and health["items"] == 16 and health["modalities"] == ["image", "text"]
    status, out = server.post_json("/search", {"text": "a small dog", "k": 3})
    assert status == 200 and out["results"][0]["id"] == "cap1" and len(out["results"]) == 3
    status, out = server.post_json("/search", {"id": "img2", "k": 5, "modality": "image"})
    assert [r["modality"] for r in out["results"]] == ["image"] * 5 and out["results"][0][
        "id"
    ] == "img2"
    assert out["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    status, _, body = server.request("GET", "/items/img2")
    item = json.loads(body)
    assert (
        status == 200
        and item["metadata"]["caption"] == "a tall tree"
        and item["media"] == "/items/img2/media"
    )
    status, headers, body = server.request("GET", item["media"])
    assert status == 200 and body == Path(item["metadata"]["source"]).read_bytes()
    assert (
        headers["content-type"] == "image/png" and "sandbox" in headers["content-security-policy"]
    )
    assert server.request("GET", "/items/cap2/media")[0] == 404  # a caption has no file
    for path in ("/", "/docs", "/openapi.json", "/static/app.js"):
        assert server.request("GET", path)[0] == 200, path


def test_file_search_and_upload_checks(server):
    png = (server.folder / "media" / "img4.png").read_bytes()
    status, out = server.upload(png, "image/png", {"k": "2", "modality": "image"})
    assert status == 200 and out["results"][0]["id"] == "img4"
    assert server.upload(png, "image/jpeg")[0] == 415  # mislabeled: PNG bytes declared JPEG
    status, out = server.upload(b"GIF89a" + b"\0" * 64, "image/gif")  # right magic, not an image
    assert status in (400, 422) and "gif" in out["error"].lower()
    assert server.upload(png, "text/plain")[0] == 415
    assert server.upload(b"", "image/png")[0] == 422
    status, out = server.upload(
        b"\x89PNG\r\n\x1a\n" + b"\0" * 300_000, "image/png"
    )  # limit 0.25 MiB
    assert status == 413 and "limit" in out["error"]
    assert server.upload(png, "image/png", {"k": "1000"})[0] == 422


def test_one_line_errors(server):
    cases = [
        ({"text": "x", "k": 0}, 422),
        ({"text": "x", "k": 101}, 422),
        ({"text": "x", "id": "img1"}, 422),
        ({}, 422),
        ({"id": "nope"}, 404),
        ({"text": 5}, 422),
        ({"text": "x", "k": "3"}, 422),
        ({"text": "x", "modality": "smell"}, 400),
        ({"text": "x", "extra": 1}, 422),
    ]
    for body, expected in cases:
        status, out = server.post_json("/search", body)
        assert status == expected, (body, out)
        assert (
            isinstance(out["error"], str)
            and "\n" not in out["error"]
            and "Traceback" not in out["error"]
        )


TRAVERSAL = [
    "../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e/%2e%2e/etc/passwd",
    "img1/../../../etc/passwd",
    "img1/media/../../x",
    "/etc/passwd",
    "%00",
    "img1%00/media",
    "....//....//etc/passwd",
    "img1/media%2F..%2F..",
]


def _request_strategy():
    junk_json = st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=True)
        | st.text(max_size=30),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=8,
    )
    fields = st.fixed_dictionaries(
        {},
        optional={
            "text": st.one_of(
                st.text(max_size=40),
                st.integers(),
                st.none(),
                st.lists(st.text(max_size=3), max_size=2),
            ),
            "id": st.one_of(
                st.sampled_from(["img1", "cap0", "nope", *TRAVERSAL]),
                st.text(max_size=20),
                st.integers(),
            ),
            "k": st.one_of(
                st.integers(-(10**12), 10**12),
                st.floats(allow_nan=True),
                st.text(max_size=5),
                st.none(),
            ),
            "modality": st.one_of(
                st.sampled_from(["image", "text", "audio", ""]), st.integers(), st.text(max_size=10)
            ),
        },
    )
    json_search = fields.map(
        lambda d: ("POST", "/search", json.dumps(d).encode(), {"Content-Type": "application/json"})
    )
    raw_search = st.one_of(
        junk_json.map(lambda j: json.dumps(j).encode()), st.binary(max_size=64)
    ).map(lambda b: ("POST", "/search", b, {"Content-Type": "application/json"}))
    items = st.one_of(st.sampled_from(TRAVERSAL), st.text(max_size=30)).flatmap(
        lambda i: st.sampled_from([quote(i, safe="/%."), quote(i, safe="")]).flatmap(
            lambda q: st.sampled_from([f"/items/{q}", f"/items/{q}/media"])
        )
    )  # raw "/", "%", "." kept
    item_requests = items.map(lambda p: ("GET", p, None, {}))
    uploads = st.tuples(
        st.sampled_from(
            [
                "image/png",
                "image/jpeg",
                "audio/ogg",
                "text/plain",
                "",
                "image/svg+xml",
                "application/json",
            ]
        ),
        st.one_of(
            st.binary(max_size=200),
            st.just(b"\x89PNG\r\n\x1a\n" + b"x" * 300_000),
            st.just(b"OggS" + b"\0" * 100),
        ),
        st.dictionaries(
            st.sampled_from(["k", "modality", "other"]), st.text(max_size=6), max_size=2
        ),
    )
    return st.one_of(json_search, raw_search, item_requests, uploads.map(lambda u: ("UPLOAD", *u)))


@settings(
    max_examples=220,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
@given(req=_request_strategy())
def test_malformed_requests_never_get_a_5xx(server, req):
    if req[0] == "UPLOAD":
        ctype, data, fields = req[1:]
        status, body = server.upload(data, ctype, fields)
        text = json.dumps(body)
    else:
        method, path, body_bytes, headers = req
        status, _, raw = server.request(method, path, body_bytes, headers)
        text = raw.decode("utf-8", "replace")
    assert status < 500, (req[:2], status, text[:300])
    assert "Traceback" not in text
    if status >= 400 and req[0] != "UPLOAD":
        assert "\n" not in json.loads(text)["error"]


def test_bad_headers_and_methods(server):
    assert server.request(
        "POST", "/search", b"{}", {"Content-Type": "application/json", "Content-Length": "99999999"}
    )[0] in (400, 413)
    assert server.request("POST", "/search", b"not json", {"Content-Type": "text/plain"})[0] == 422
    assert server.request("DELETE", "/items/img1")[0] == 405
    assert server.request("GET", "/search")[0] == 405
    assert (
        server.request(
            "POST", "/search/file", b"--x--", {"Content-Type": "multipart/form-data; boundary=x"}
        )[0]
        == 422
    )


def test_no_path_traversal(server):
    for raw in TRAVERSAL:
        for path in (
            f"/items/{quote(raw, safe='/%.')}",
            f"/items/{quote(raw, safe='')}/media",
            f"/items/{quote(raw, safe='/%.')}/media",
        ):
            status, _, body = server.request("GET", path)
            assert status in (404, 400), (path, status)
            assert b"root:" not in body
