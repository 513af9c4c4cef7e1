"""The HTTP API on the session app: upload, read, list, delete, search by text and by image.

Tests share one gallery, so each gives its items a camera id of its own and filters on it where
counts matter.
"""

from __future__ import annotations

import hashlib
import json

from fastapi.testclient import TestClient
from service_helpers import png_variant, search_ids, upload

SLASH_ID = "cam3/2026-12-01T10:00:00Z/track17"
LONG_DESCRIPTION = " ".join(
    ["The woman is wearing a long red coat over a white blouse, black trousers and white sneakers."] * 20
)


def test_upload_then_read_metadata_and_crop(client: TestClient, crops: dict[str, bytes]) -> None:
    crop = crops["0107001.png"]
    response = upload(
        client,
        [("track17.png", crop)],
        ids=[SLASH_ID],
        camera_id="api-read",
        captured_at="2026-12-01T10:00:00Z",
        metadata=json.dumps({"site": "north gate"}),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["results"][0]["id"] == SLASH_ID
    assert body["results"][0]["status"] in ("created", "updated")
    assert body["results"][0]["error"] is None

    item = client.get(f"/gallery/{SLASH_ID}")
    assert item.status_code == 200, item.text
    assert item.json()["id"] == SLASH_ID
    assert item.json()["camera_id"] == "api-read"
    assert item.json()["captured_at"].startswith("2026-12-01T10:00:00")
    assert item.json()["metadata"] == {"site": "north gate"}
    assert (item.json()["width"], item.json()["height"]) == (60, 160)
    assert item.json()["sha256"] == hashlib.sha256(crop).hexdigest()
    assert item.json()["image_url"] == "/gallery/cam3/2026-12-01T10%3A00%3A00Z/track17/image"

    image = client.get(item.json()["image_url"])
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert image.content == crop


def test_upload_without_id_uses_content_hash(client: TestClient, crops: dict[str, bytes]) -> None:
    crop = crops["0109001.png"]
    first = upload(client, [("a.png", crop)], camera_id="api-hash")
    second = upload(client, [("b.png", crop)], camera_id="api-hash")

    expected_id = hashlib.sha256(crop).hexdigest()
    assert first.json()["results"][0]["id"] == expected_id
    assert second.json()["results"][0]["id"] == expected_id
    assert second.json()["results"][0]["status"] == "updated"
    assert second.json()["updated"] == 1
    assert client.get(f"/gallery/{expected_id}").json()["source"] == "b.png"


def test_bad_file_does_not_fail_neighbours(client: TestClient, crops: dict[str, bytes]) -> None:
    files = [
        ("good.png", crops["0107002.png"]),
        ("bad.png", b"not an image at all"),
        ("good2.png", crops["0107003.png"]),
    ]
    response = upload(client, files, ids=["api-neighbours/1", "api-neighbours/2", "api-neighbours/3"])

    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["status"] for r in body["results"]] == ["created", "rejected", "created"]
    assert body["results"][1]["error"]["error"] == "unsupported_image"
    assert body["results"][1]["filename"] == "bad.png"
    assert (body["created"], body["updated"], body["rejected"]) == (2, 0, 1)
    assert client.get("/gallery/api-neighbours/3").status_code == 200


def test_items_override_request_defaults(client: TestClient, crops: dict[str, bytes]) -> None:
    items = [
        {"id": "api-items/a", "metadata": {"track": 1}},
        {"id": "api-items/b", "camera_id": "api-items-other", "captured_at": "2026-12-02T08:30:00+01:00"},
    ]
    response = upload(
        client,
        [("a.png", crops["0107001.png"]), ("b.png", crops["0107004.png"])],
        camera_id="api-items",
        captured_at="2026-12-01T10:00:00Z",
        metadata=json.dumps({"site": "gate"}),
        items=json.dumps(items),
    )
    assert response.status_code == 200, response.text

    first = client.get("/gallery/api-items/a").json()
    second = client.get("/gallery/api-items/b").json()
    assert first["camera_id"] == "api-items"
    assert first["metadata"] == {"site": "gate", "track": 1}
    assert second["camera_id"] == "api-items-other"
    assert second["captured_at"].startswith("2026-12-02T07:30:00")


def test_same_id_twice_in_one_request(client: TestClient, crops: dict[str, bytes]) -> None:
    files = [("first.png", crops["0107001.png"]), ("second.png", crops["0107003.png"])]
    response = upload(client, files, ids=["api-twice", "api-twice"])

    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == ["created", "updated"]
    assert client.get("/gallery/api-twice").json()["source"] == "second.png"


def test_ambiguous_ids_rejected(client: TestClient, crops: dict[str, bytes]) -> None:
    bad_ids = ["stats", "cam1/image", "/cam1", "cam1/", "cam1//x", "cam1/../x", ""]
    files = [(f"{index}.png", crops["0107001.png"]) for index in range(len(bad_ids))]
    response = upload(client, files, items=json.dumps([{"id": item_id} for item_id in bad_ids]))

    assert response.status_code == 200, response.text
    for result in response.json()["results"]:
        assert result["status"] == "rejected", result
        assert result["error"]["error"] == "invalid_id", result


def test_delete_item(client: TestClient, crops: dict[str, bytes]) -> None:
    upload(client, [("d.png", crops["0109003.png"])], ids=["api-delete/x"])

    assert client.delete("/gallery/api-delete/x").status_code == 204
    missing = client.get("/gallery/api-delete/x")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    again = client.delete("/gallery/api-delete/x")
    assert again.status_code == 404
    assert again.json()["error"] == "not_found"


def test_list_pages_visit_every_item_once(client: TestClient, crops: dict[str, bytes]) -> None:
    ids = [f"api-list/{index:02d}" for index in range(5)]
    files = [(f"{index}.png", png_variant(crops["0107001.png"], index)) for index in range(5)]
    assert upload(client, files, ids=ids, camera_id="api-list").status_code == 200

    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, "camera_id": "api-list", **({"cursor": cursor} if cursor else {})}
        page = client.get("/gallery", params=params)
        assert page.status_code == 200, page.text
        seen.extend(item["id"] for item in page.json()["items"])
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == ids


def test_list_rejects_bad_cursor_and_time(client: TestClient) -> None:
    cursor = client.get("/gallery", params={"cursor": "not-a-cursor"})
    assert cursor.status_code == 422
    assert cursor.json()["error"] == "invalid_cursor"

    naive = client.get("/gallery", params={"captured_from": "2026-12-01T10:00:00"})
    assert naive.status_code == 422
    assert naive.json()["error"] == "invalid_request"
    assert "captured_from" in naive.json()["detail"]


def test_list_rejects_limit_above_maximum(client: TestClient) -> None:
    response = client.get("/gallery", params={"limit": 100000})
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"
    assert "limit" in response.json()["detail"]


def test_stats_count_cameras(client: TestClient, crops: dict[str, bytes]) -> None:
    files = [(f"{index}.png", png_variant(crops["0109001.png"], 100 + index)) for index in range(3)]
    upload(client, files, camera_id="api-stats")

    stats = client.get("/gallery/stats")
    assert stats.status_code == 200, stats.text
    body = stats.json()
    cameras = {entry["camera_id"]: entry["count"] for entry in body["cameras"]}
    assert cameras["api-stats"] == 3
    assert body["count"] == client.get("/ready").json()["gallery_size"]
    assert body["backend"] == "faiss"
    assert body["dim"] == 64


def test_search_returns_ranked_results(client: TestClient, crops: dict[str, bytes]) -> None:
    upload(client, [("s.png", crops["0107001.png"])], ids=["api-search/1"], camera_id="api-search")

    response = client.post("/search", json={"text": "a man in a dark jacket", "top_k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    scores = [result["score"] for result in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert [result["rank"] for result in body["results"]] == list(range(1, len(scores) + 1))
    assert body["tokens_used"] > 2
    assert body["truncated"] is False
    assert body["took_ms"] > 0
    assert body["model_identity"] == client.get("/ready").json()["model_identity"]


def test_search_camera_filter(client: TestClient, crops: dict[str, bytes]) -> None:
    files = [(f"{index}.png", png_variant(crops["0107003.png"], 200 + index)) for index in range(2)]
    upload(client, files, ids=["api-filter/1", "api-filter/2"], camera_id="api-filter")

    ids = search_ids(client, "a person", top_k=50, filters={"camera_ids": ["api-filter"]})
    assert sorted(ids) == ["api-filter/1", "api-filter/2"]


def test_search_time_filter(client: TestClient, crops: dict[str, bytes]) -> None:
    files = [(f"{index}.png", png_variant(crops["0107004.png"], 300 + index)) for index in range(3)]
    items = [
        {"id": f"api-time/{hour}", "captured_at": f"2026-12-01T{hour}:00:00Z"} for hour in ("08", "12", "18")
    ]
    upload(client, files, camera_id="api-time", items=json.dumps(items))

    filters = {
        "camera_ids": ["api-time"],
        "captured_from": "2026-12-01T10:00:00Z",
        "captured_to": "2026-12-01T12:00:00Z",
    }
    assert search_ids(client, "a person", top_k=50, filters=filters) == ["api-time/12"]


def test_search_filter_range_reversed(client: TestClient) -> None:
    filters = {"captured_from": "2026-12-02T00:00:00Z", "captured_to": "2026-12-01T00:00:00Z"}
    response = client.post("/search", json={"text": "a person", "filters": filters})
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"
    assert "captured_from" in response.json()["detail"]


def test_search_by_item_id_ranks_item_first(client: TestClient, crops: dict[str, bytes]) -> None:
    upload(client, [("p.png", crops["0107002.png"])], ids=["api-probe/1"], camera_id="api-probe")

    response = client.post("/search/image", data={"id": "api-probe/1", "top_k": "3"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["results"][0]["id"] == "api-probe/1"
    assert abs(body["results"][0]["score"] - 1.0) < 1e-4
    assert body["tokens_used"] == 0


def test_search_by_uploaded_file(client: TestClient, crops: dict[str, bytes]) -> None:
    upload(client, [("q.png", crops["0109003.png"])], ids=["api-probe-file/1"], camera_id="api-probe-file")

    response = client.post(
        "/search/image",
        files={"file": ("probe.png", crops["0109003.png"], "image/png")},
        data={"top_k": "5", "filters": json.dumps({"camera_ids": ["api-probe-file"]})},
    )
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["id"] == "api-probe-file/1"
    assert response.json()["results"][0]["score"] > 0.999


def test_search_image_needs_exactly_one_probe(client: TestClient, crops: dict[str, bytes]) -> None:
    neither = client.post("/search/image", data={"top_k": "3"})
    both = client.post(
        "/search/image", files={"file": ("p.png", crops["0107001.png"], "image/png")}, data={"id": SLASH_ID}
    )
    for response in (neither, both):
        assert response.status_code == 422
        assert response.json()["error"] == "invalid_request"


def test_search_image_bad_filters(client: TestClient) -> None:
    response = client.post("/search/image", data={"id": SLASH_ID, "filters": "{not json"})
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"
    assert "filters" in response.json()["detail"]


def test_search_image_unknown_id(client: TestClient) -> None:
    response = client.post("/search/image", data={"id": "api-no-such-item"})
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_top_k_bounds(client: TestClient, app_settings) -> None:
    for top_k in (0, -1, app_settings.max_top_k + 1):
        response = client.post("/search", json={"text": "a person", "top_k": top_k})
        assert response.status_code == 422, top_k
        assert response.json()["error"] == "invalid_top_k"
        assert str(app_settings.max_top_k) in response.json()["detail"]

    largest = client.post("/search", json={"text": "a person", "top_k": app_settings.max_top_k})
    assert largest.status_code == 200
    gallery_size = client.get("/gallery/stats").json()["count"]
    assert len(largest.json()["results"]) == min(app_settings.max_top_k, gallery_size)


def test_search_image_top_k_bounds(client: TestClient, app_settings) -> None:
    response = client.post("/search/image", data={"id": SLASH_ID, "top_k": str(app_settings.max_top_k + 1)})
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_top_k"


def test_long_text_truncated_and_flagged(client: TestClient) -> None:
    max_tokens = client.get("/ready").json()["max_text_tokens"]

    response = client.post("/search", json={"text": LONG_DESCRIPTION, "top_k": 3})
    assert response.status_code == 200, response.text
    assert response.json()["truncated"] is True
    assert response.json()["tokens_used"] == max_tokens


def test_text_over_character_limit(client: TestClient, app_settings) -> None:
    text = "a" * (app_settings.max_text_chars + 1)
    response = client.post("/search", json={"text": text})
    assert response.status_code == 413
    assert response.json()["error"] == "text_too_long"
    assert str(app_settings.max_text_chars) in response.json()["detail"]
    assert text not in response.json()["detail"]


def test_empty_blank_and_control_text_rejected(client: TestClient) -> None:
    for text in ("", "   ", "\n\t \r", "a man\x00 in red", "\x1b[31m"):
        response = client.post("/search", json={"text": text})
        assert response.status_code == 422, repr(text)
        assert response.json()["error"] == "invalid_text", repr(text)


def test_non_english_text(client: TestClient) -> None:
    for text in (
        "一个穿着红色外套的女人",
        "Ein Mann mit blauer Jacke und schwarzer Hose",
        "женщина в красном пальто",
    ):
        response = client.post("/search", json={"text": text, "top_k": 3})
        assert response.status_code == 200, text
        assert response.json()["tokens_used"] > 2
        assert len(response.json()["results"]) == 3


def test_search_body_validation(client: TestClient) -> None:
    missing = client.post("/search", json={"top_k": 3})
    extra = client.post("/search", json={"text": "a man", "colour": "red"})
    broken = client.post("/search", content=b"{broken", headers={"content-type": "application/json"})
    for response in (missing, extra, broken):
        assert response.status_code == 422
        assert set(response.json()) == {"error", "detail"}
        assert response.json()["error"] == "invalid_request"
    assert "text" in missing.json()["detail"]
    assert "colour" in extra.json()["detail"]


def test_naive_captured_at_rejected(client: TestClient, crops: dict[str, bytes]) -> None:
    response = upload(client, [("n.png", crops["0107001.png"])], captured_at="2026-12-01T10:00:00")
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"
    assert "captured_at" in response.json()["detail"]


def test_ids_count_must_match_files(client: TestClient, crops: dict[str, bytes]) -> None:
    response = upload(
        client, [("a.png", crops["0107001.png"]), ("b.png", crops["0107002.png"])], ids=["only-one"]
    )
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"


def test_metadata_must_be_object(client: TestClient, crops: dict[str, bytes]) -> None:
    response = upload(client, [("a.png", crops["0107001.png"])], metadata="[1, 2]")
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"
    assert "metadata" in response.json()["detail"]


def test_unknown_route_and_method(client: TestClient) -> None:
    unknown = client.get("/no/such/route")
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "not_found"
    wrong_method = client.put("/search", json={})
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"] == "method_not_allowed"


def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "alive"}
    ready = client.get("/ready").json()
    assert ready["status"] == "ready"
    assert ready["dim"] == 64
    assert ready["backend"] == "faiss"
    assert ready["max_text_tokens"] == 64
    assert len(ready["model_identity"]) > 0


def test_metrics_per_route_template(client: TestClient, crops: dict[str, bytes]) -> None:
    upload(client, [("m.png", crops["0107001.png"])], ids=["api-metrics/x"])
    client.get("/gallery/api-metrics/x")
    client.post("/search", json={"text": "a person in blue", "top_k": 2})

    text = client.get("/metrics").text
    assert 'axm_http_requests_total{method="GET",route="/gallery/{item_id:path}",status="200"}' in text
    assert 'axm_http_requests_total{method="POST",route="/search",status="200"}' in text
    assert 'axm_encode_seconds_count{modality="text"}' in text
    assert 'axm_encode_seconds_count{modality="image"}' in text
    assert "axm_search_seconds_count" in text
    gallery_line = next(line for line in text.splitlines() if line.startswith("axm_gallery_items "))
    assert float(gallery_line.split()[1]) == client.get("/gallery/stats").json()["count"]
    assert "api-metrics/x" not in text


def test_root_serves_search_page(client: TestClient) -> None:
    from service.app import STATIC_DIR

    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.content == (STATIC_DIR / "index.html").read_bytes()
    assert client.get("/static/index.html").status_code == 200

    missing = client.get("/static/no-such-file.js")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
