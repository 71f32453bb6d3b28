"""Every DICOMweb route, walked from the application itself (not from a list kept here).

- OpenAPI describes each route the app serves under the DICOMweb base path (same
  methods, same paths), with a summary, its path parameters and its error statuses.
- Each route answers the error cases of issue 5 item 6 with a JSON body giving a
  reason, never a 500: no token (401), a token without the permission (403), a
  malformed UID (400), an unknown or out-of-scope UID (404), an unacceptable media
  type (406), hostile path values (400/404), and for STOW-RS an unsupported media
  type (415) and a malformed multipart body (400).

A route added later is walked too; one this file cannot fill in fails the test.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi.testclient import TestClient
from httpx import Response
from pydicom import dcmread
from pydicom.uid import generate_uid
from starlette.routing import BaseRoute

import factories
from coffre.services.ingest import ingest

if TYPE_CHECKING:
    from tests.web.conftest import WebArchive

BASE = "/dicomweb"
#: path parameters that name a UID, with the Value Representation check they get
UID_PARAMS = ("study", "series", "instance")
#: the one route that takes its UIDs in the query string (PS3.18 9, WADO-URI)
WADO_URI = "/wado"


def _openapi_path(path: str) -> str:
    """``{path:path}`` (a Starlette converter) is ``{path}`` in OpenAPI."""
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", path)


def _served_routes(routes: Sequence[BaseRoute]) -> Iterator[tuple[str, set[str]]]:
    """(path, methods) of every endpoint, through included routers.

    FastAPI ≥ 0.16x keeps an included router as one route of the app
    (``iter_route_contexts`` yields its effective routes); older versions copy the
    routes into the app, prefix added.
    """
    try:
        from fastapi.routing import iter_route_contexts  # type: ignore[attr-defined]
    except ImportError:  # FastAPI < 0.16x: included routes are already flat
        contexts: Iterable[Any] = routes
    else:
        contexts = iter_route_contexts(routes)
    for route in contexts:
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        if isinstance(path, str) and methods and getattr(route, "endpoint", None) is not None:
            yield path, set(methods)


def dicomweb_routes(client: TestClient) -> list[tuple[str, str]]:
    """(METHOD, path) of every route the app serves under the DICOMweb base path."""
    out = []
    for path, methods in _served_routes(client.app.routes):  # type: ignore[attr-defined]
        if path.startswith(BASE + "/"):
            out += [(method, path) for method in sorted(methods) if method != "HEAD"]
    return sorted(out)


def _is_search(method: str, path: str) -> bool:
    """QIDO-RS routes: they answer an unknown UID with an empty result, not 404."""
    return method == "GET" and path.removeprefix(BASE).rstrip("/").rsplit("/", 1)[-1] in (
        "studies", "series", "instances", "patients")


# --- OpenAPI ------------------------------------------------------------------------


def test_openapi_describes_every_dicomweb_route(client: TestClient) -> None:
    routes = dicomweb_routes(client)
    assert len(routes) >= 27  # STOW-RS 2, QIDO-RS 8, WADO-RS 8, rendered/thumbnail 8, WADO-URI 1
    paths = client.get("/openapi.json").json()["paths"]
    served = {(method.lower(), _openapi_path(path)) for method, path in routes}
    described = {
        (method, path) for path, item in paths.items() if path.startswith(BASE + "/")
        for method in item if method in ("get", "post", "put", "delete", "patch")
    }
    assert served == described
    for method, path in sorted(served):
        operation = paths[path][method]
        where = f"{method.upper()} {path}"
        assert operation.get("summary"), where
        assert "DICOMweb" in operation.get("tags", []), where
        declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
        assert declared == set(re.findall(r"\{(\w+)\}", path)), where
        statuses = set(operation["responses"])
        success = {"200"} if method == "get" else {"200", "202", "409"}  # STOW-RS: PS3.18 10.5.3
        assert success <= statuses, where
        assert {"400", "401", "403"} <= statuses, where
        assert "422" not in statuses, where  # validation errors are answered 400 (web/errors.py)
        if not _is_search(method.upper(), path) and method == "get":
            assert {"404", "406"} <= statuses, where
        if method == "post":
            assert {"413", "415"} <= statuses, where


# --- errors ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    study: str
    series: str
    instance: str


def _store(web: WebArchive) -> Stored:
    """One CT instance of two frames, archived for site a."""
    data = factories.make_instance(frames=2, rows=16, columns=16)
    ds = dcmread(BytesIO(data))
    ingest(web.ctx, web.actor_a, data, source="test")
    return Stored(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


def _fill(path: str, values: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in values, f"{path}: no value for the path parameter {name!r}"
        return values[name]

    return re.sub(r"\{(\w+)(?::\w+)?\}", one, path)


def _values(stored: Stored, **overrides: str) -> dict[str, str]:
    values = {"study": stored.study, "series": stored.series, "instance": stored.instance,
              "frames": "1", "frame": "1", "path": "7FE00010"}
    return {**values, **overrides}


def _wado_uri_query(stored: Stored, **overrides: str) -> str:
    params = {"requestType": "WADO", "studyUID": stored.study, "seriesUID": stored.series,
              "objectUID": stored.instance, "contentType": "application/dicom"}
    params.update(overrides)
    return "?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())


def _assert_json_error(response: Response, status: int | set[int], where: str) -> None:
    statuses = {status} if isinstance(status, int) else status
    assert response.status_code in statuses, (where, response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), where
    body = response.json()
    assert set(body) == {"error", "reason"}, where
    assert isinstance(body["reason"], str) and body["reason"].strip(), where
    assert "x-injected" not in response.headers, where


def _gets(client: TestClient) -> Iterator[str]:
    for method, path in dicomweb_routes(client):
        if method == "GET":
            yield path


def _request(client: TestClient, web: WebArchive, path: str, stored: Stored, *,
             token: str | None = "a", headers: dict[str, str] | None = None,
             **values: str) -> tuple[str, Response]:
    """GET ``path`` filled with the stored instance's UIDs (``values`` override them)."""
    if path == BASE + WADO_URI:
        url = path + _wado_uri_query(stored, **{
            {"study": "studyUID", "series": "seriesUID", "instance": "objectUID"}[k]: v
            for k, v in values.items() if k in UID_PARAMS})
    else:
        url = _fill(path, _values(stored, **values))
    auth = {} if token is None else web.headers(token if token != "a" else None)
    return url, client.get(url, headers={**auth, **(headers or {})})


def test_every_get_route_succeeds_on_a_stored_instance(web: WebArchive, client: TestClient) -> None:
    """The walk below fills each route correctly: the same requests succeed first."""
    stored = _store(web)
    for path in _gets(client):
        url, response = _request(client, web, path, stored)
        assert response.status_code == 200, (url, response.text[:300])
        if _is_search("GET", path):
            assert len(response.json()) == 1, url


def test_every_route_refuses_without_a_valid_token(web: WebArchive, client: TestClient) -> None:
    stored = _store(web)
    for method, path in dicomweb_routes(client):
        for headers in ({}, {"Authorization": "Bearer cof_forged"}, {"Authorization": "Basic eDp5"}):
            if method == "GET":
                url, response = _request(client, web, path, stored, token=None, headers=headers)
            else:
                url = _fill(path, _values(stored))
                response = client.post(url, headers=headers, content=b"--x--\r\n")
            _assert_json_error(response, 401, f"{method} {url}")
            assert response.json()["error"] == "NotAuthenticated", url
            assert response.headers["www-authenticate"].startswith("Bearer"), url


def test_every_route_refuses_a_token_without_the_permission(web: WebArchive, client: TestClient) -> None:
    """The query-only token may search, not retrieve, render or store (403 before any work)."""
    stored = _store(web)
    for method, path in dicomweb_routes(client):
        if method == "GET":
            url, response = _request(client, web, path, stored, token=web.token_a_query_only)
            if _is_search(method, path):
                assert response.status_code == 200, url
                continue
        else:
            url = _fill(path, _values(stored))
            response = client.post(url, headers=web.headers(
                web.token_a_query_only,
                **{"Content-Type": 'multipart/related; type="application/dicom"; boundary=x'}),
                content=b"--x--\r\n")
        _assert_json_error(response, 403, f"{method} {url}")
        assert response.json()["error"] == "NotAuthorized", url


def test_malformed_uids_are_400_on_every_route(web: WebArchive, client: TestClient) -> None:
    stored = _store(web)
    for method, path in dicomweb_routes(client):
        names = [n for n in UID_PARAMS if "{" + n + "}" in path]
        if path == BASE + WADO_URI:
            names = list(UID_PARAMS)
        for name in names:
            for bad in ("1.2.abc", "01.2.3", "1..2", "1.2.", "1.2.3%20"):
                if method == "GET":
                    url, response = _request(client, web, path, stored, **{name: bad})
                else:
                    url = _fill(path, _values(stored, **{name: bad}))
                    response = client.post(url, headers=web.headers(
                        **{"Content-Type": 'multipart/related; type="application/dicom"; boundary=x'}),
                        content=b"--x--\r\n")
                _assert_json_error(response, 400, f"{method} {url}")
                assert response.json()["error"] in ("InvalidUID", "BadRequest"), url


def test_unknown_and_out_of_scope_uids_are_404(web: WebArchive, client: TestClient) -> None:
    """An unknown UID and another facility's UID get the same answer (PS3.18 10.4.3)."""
    stored = _store(web)
    for path in _gets(client):
        names = [n for n in UID_PARAMS if "{" + n + "}" in path]
        if path == BASE + WADO_URI:
            names = list(UID_PARAMS)
        cases = [("a", {name: generate_uid()}) for name in names] + [(web.token_b, {})]
        for token, values in cases:
            url, response = _request(client, web, path, stored, token=token, **values)
            if _is_search("GET", path):
                assert response.status_code == 200 and response.json() == [], url
                continue
            _assert_json_error(response, 404, f"GET {url}")
            assert response.json()["error"] == "NotFound", url


def test_unacceptable_media_types_are_406_on_every_get_route(web: WebArchive, client: TestClient) -> None:
    stored = _store(web)
    for path in _gets(client):
        if path == BASE + WADO_URI:  # its media type is the contentType parameter
            url = path + _wado_uri_query(stored, contentType="application/pdf")
            response = client.get(url, headers=web.headers())
        else:
            url, response = _request(client, web, path, stored,
                                     headers={"Accept": "application/pdf"})
        _assert_json_error(response, 406, f"GET {url}")
        assert response.json()["error"] in ("NotAcceptable", "TranscodeError"), url


#: hostile values for any path parameter: never a 500, never an echoed header
HOSTILE = [
    "%00", "%0D%0AX-Injected:%201", "..%2F..%2Fetc%2Fpasswd", "%E9%E9", "%FF%FE",
    "1." + "2" * 200, "9" * 70, "'%20OR%201=1%20--", "*", "%25", "1,2,3," * 50,
    "%C0%AE%C0%AE", "-1", "0", "1e9",
]


def test_hostile_path_values_never_500(web: WebArchive, client: TestClient) -> None:
    stored = _store(web)
    for path in _gets(client):
        names = re.findall(r"\{(\w+)(?::\w+)?\}", path)
        for name in names:
            for raw in HOSTILE:
                url = _fill(path, _values(stored, **{name: raw}))
                response = client.get(url, headers=web.headers())
                if _is_search("GET", path) and response.status_code == 200:
                    assert response.json() == [], url
                    continue
                _assert_json_error(response, {400, 404}, f"GET {url}")


def test_stow_routes_map_media_type_and_body_errors(web: WebArchive, client: TestClient) -> None:
    stored = _store(web)
    posts = [path for method, path in dicomweb_routes(client) if method == "POST"]
    assert posts
    related = 'multipart/related; type="application/dicom"; boundary=xyz'
    for path in posts:
        url = _fill(path, _values(stored))
        for content_type in ("application/dicom", "text/plain", "multipart/form-data; boundary=x",
                             'multipart/related; type="application/dicom+json"; boundary=x', ""):
            response = client.post(url, headers=web.headers(**{"Content-Type": content_type}),
                                   content=b"x")
            _assert_json_error(response, 415, f"POST {url} {content_type!r}")
        for body in (b"", b"no boundary at all", b"--xyz\r\nContent-Type: application/dicom\r\n\r\nabc",
                     b"--xyz\r\n" + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n--xyz--\r\n"):
            response = client.post(url, headers=web.headers(**{"Content-Type": related}), content=body)
            _assert_json_error(response, 400, f"POST {url} {body[:20]!r}")
        for boundary in ("", "a" * 71, "bad\x01"):
            response = client.post(url, headers=web.headers(**{
                "Content-Type": f'multipart/related; type="application/dicom"; boundary="{boundary}"'}),
                content=b"--x--\r\n")
            _assert_json_error(response, 400, f"POST {url} boundary {boundary!r}")
