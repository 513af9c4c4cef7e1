"""The OpenAPI schema: served, valid OpenAPI 3.1, and every route documented with examples."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from openapi_spec_validator import validate

EXPECTED_OPERATIONS = {
    ("get", "/health"),
    ("get", "/ready"),
    ("get", "/metrics"),
    ("post", "/search"),
    ("post", "/search/image"),
    ("post", "/gallery"),
    ("get", "/gallery"),
    ("get", "/gallery/stats"),
    ("get", "/gallery/{item_id}"),
    ("get", "/gallery/{item_id}/image"),
    ("delete", "/gallery/{item_id}"),
}


@pytest.fixture(scope="module")
def schema(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def operations(schema: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): operation
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
    }


def schema_has_examples(schema: dict[str, Any], node: dict[str, Any]) -> bool:
    """True when `node` (a media type or a schema) has examples, directly or in the component it references."""
    if "example" in node or "examples" in node:
        return True
    inner = node.get("schema", node)
    if "examples" in inner or "example" in inner:
        return True
    reference = inner.get("$ref")
    if reference:
        component = schema["components"]["schemas"][reference.rsplit("/", 1)[-1]]
        return "examples" in component
    return False


def test_schema_is_valid_openapi(schema: dict[str, Any]) -> None:
    validate(schema)
    assert schema["openapi"].startswith("3.")


def test_every_route_is_in_schema(schema: dict[str, Any]) -> None:
    assert set(operations(schema)) == EXPECTED_OPERATIONS


def test_every_route_has_summary_and_description(schema: dict[str, Any]) -> None:
    for key, operation in operations(schema).items():
        assert operation.get("summary"), key
        assert len(operation.get("description", "")) > 20, key


def test_every_success_response_has_example(schema: dict[str, Any]) -> None:
    for key, operation in operations(schema).items():
        if key == ("delete", "/gallery/{item_id}"):
            assert "204" in operation["responses"]
            continue
        if key == ("get", "/gallery/{item_id}/image"):
            assert "image/png" in operation["responses"]["200"]["content"]
            continue
        content = operation["responses"]["200"]["content"]
        assert any(schema_has_examples(schema, media) for media in content.values()), key


def test_request_bodies_have_examples(schema: dict[str, Any]) -> None:
    search = operations(schema)[("post", "/search")]["requestBody"]["content"]["application/json"]
    assert schema_has_examples(schema, search)
    upload = operations(schema)[("post", "/gallery")]["requestBody"]["content"]["multipart/form-data"]
    component = schema["components"]["schemas"][upload["schema"]["$ref"].rsplit("/", 1)[-1]]
    assert "files" in component["required"]
    assert "examples" in component["properties"]["camera_id"]


def test_error_responses_documented(schema: dict[str, Any]) -> None:
    upload = operations(schema)[("post", "/gallery")]["responses"]
    for status in ("401", "403", "413", "422"):
        assert upload[status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody"), status
    assert "examples" in schema["components"]["schemas"]["ErrorBody"]


def test_write_routes_declare_api_key(schema: dict[str, Any]) -> None:
    schemes = schema["components"]["securitySchemes"]
    assert any(scheme["type"] == "apiKey" and scheme["name"] == "X-API-Key" for scheme in schemes.values())
    for key in (("post", "/gallery"), ("delete", "/gallery/{item_id}"), ("post", "/search")):
        assert operations(schema)[key].get("security"), key
    assert not operations(schema)[("get", "/health")].get("security")
