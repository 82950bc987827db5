"""The optional API key: every route but the probes, the page and the API's description needs
it; a missing or wrong key is a 401 with a JSON error."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from test_serve import png, wait_ready

from fmnist.cli.serve import api_key
from fmnist.errors import ConfigError
from fmnist.predict import Predictor
from fmnist.serve import create_app

KEY = "k3y-of-the-test"
PNG = {"Content-Type": "image/png"}


@pytest.fixture
def client(make_checkpoint):
    with TestClient(create_app(Predictor.from_checkpoint(make_checkpoint("mlp")), api_key=KEY)) as c:
        wait_ready(c)
        yield c


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/", "/docs", "/static/app.js", "/openapi.json"])
def test_probes_and_the_page_need_no_key(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 200


@pytest.mark.parametrize("path", ["/v1/model", "/v1/stats", "/v1/samples", "/metrics"])
def test_every_other_route_needs_the_key(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 401 and "needs an API key" in r.json()["error"]
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert client.get(path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_predictions_with_the_right_key_only(client: TestClient) -> None:
    assert client.post("/v1/predict", content=png(), headers=PNG).status_code == 401
    wrong = client.post("/v1/predict", content=png(), headers={**PNG, "Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "wrong" in wrong.json()["error"]
    assert client.post("/v1/predict", content=png(), headers={**PNG, "Authorization": f"Bearer {KEY}"}).status_code == 200
    assert client.post("/v1/predict", content=png(), headers={**PNG, "X-API-Key": KEY}).status_code == 200
    assert client.post("/v1/predict", content=png(), headers={**PNG, "X-API-Key": KEY[:-1]}).status_code == 401
    info = client.get("/v1/model", headers={"X-API-Key": KEY}).text
    assert KEY not in info
    metrics = client.get("/metrics", headers={"X-API-Key": KEY}).text
    assert 'status="401"} 3.0' in metrics  # refusals are counted too


def test_the_key_comes_from_a_file_or_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("FMNIST_API_KEY", raising=False)
    assert api_key(None) is None
    monkeypatch.setenv("FMNIST_API_KEY", "from-env")
    assert api_key(None) == "from-env"
    (tmp_path / "key").write_text(" from-file \n")
    assert api_key(str(tmp_path / "key")) == "from-file"
    (tmp_path / "empty").write_text("\n")
    for bad, words in ((tmp_path / "empty", "one non-empty line"), (tmp_path / "missing", "Cannot read")):
        with pytest.raises(ConfigError, match=words):
            api_key(str(bad))

