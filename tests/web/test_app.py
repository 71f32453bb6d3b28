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


def test_cors_is_off_by_default(client: TestClient, web) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/dicomweb/studies", headers={**web.headers(), "Origin": "https://viewer.example"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_cors_allows_the_configured_origin_only(database, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from coffre.web.http import create_app
    from web.conftest import build_web_archive

    web = build_web_archive(database, tmp_path, cors_origins="https://viewer.example")
    with TestClient(create_app(web.ctx)) as cors_client:
        preflight = cors_client.options(
            "/dicomweb/studies/1.2.3/metadata",
            headers={"Origin": "https://viewer.example", "Access-Control-Request-Method": "GET",
                     "Access-Control-Request-Headers": "authorization"},
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://viewer.example"
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        answer = cors_client.get("/dicomweb/studies", headers={**web.headers(), "Origin": "https://viewer.example"})
        assert answer.headers["access-control-allow-origin"] == "https://viewer.example"
        assert "warning" in answer.headers["access-control-expose-headers"].lower()
        other = cors_client.get("/dicomweb/studies", headers={**web.headers(), "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_openapi_documents_validation_errors_as_the_400_they_are(client: TestClient, web) -> None:  # type: ignore[no-untyped-def]
    """FastAPI would document 422; the app answers a validation error 400 (web/errors.py)."""
    import json
    import re

    doc = client.get("/openapi.json").json()
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            assert "422" not in operation.get("responses", {}), (method, path)
    text = json.dumps(doc)
    schemas = doc.get("components", {}).get("schemas", {})
    for ref in set(re.findall(r'"#/components/schemas/([^"]+)"', text)):
        assert ref in schemas, ref  # every reference still resolves
    # what the description says is what a validation error gets (a UID longer than 64)
    response = client.get("/dicomweb/studies/1.2.3/series/" + "1" * 65, headers=web.headers())
    assert response.status_code == 400
    assert response.json()["error"] == "InvalidRequest"
    assert "400" in doc["paths"]["/dicomweb/studies/{study}/series/{series}"]["get"]["responses"]
