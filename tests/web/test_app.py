"""The HTTP application's shared behaviour: health, authentication, error mapping, OpenAPI."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_health_answers_without_credentials(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "index": "ok", "storage": "ok"}


def test_openapi_is_served(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["info"]["title"] == "Coffre"
    assert "/healthz" in doc["paths"]


def test_unknown_route_is_a_json_404(client: TestClient) -> None:
    response = client.get("/nowhere")
    assert response.status_code == 404
    assert response.json()["error"] == "HTTPError"
