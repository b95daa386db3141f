"""The dashboard's routes: pages, JSON, files under the runs folder only, nothing that writes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from braver.dashboard.app import allowed_hosts_for, create_app, inside

_spec = importlib.util.spec_from_file_location(
    "fake_runs", Path(__file__).with_name("fake_runs.py")
)
fake = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake)


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    run = fake.write_run(root, "brain-1")
    fake.write_run(root, "brain-2", status="running", stages={"stage1": 1})
    fake.write_transfer_study(root)
    fake.write_surgery_study(run)
    (tmp_path / "secret.txt").write_text("outside the runs folder")
    (root / "brain-1" / ".history.csv.abc.tmp").write_text("half-written")
    (root / "brain-1" / "escape").symlink_to(tmp_path / "secret.txt")
    return root


@pytest.fixture
def client(runs):
    return TestClient(create_app(runs))


def test_pages_are_html_shells_that_load_the_script(client):
    for url, page in [
        ("/", "runs"),
        ("/run/brain-1", "run"),
        ("/compare?runs=brain-1,brain-2", "compare"),
        ("/study/transfer-liver-20250101-000000", "study"),
        ("/study/brain-1/prune-20250101-000000", "study"),
    ]:
        response = client.get(url)
        assert response.status_code == 200, url
        assert f'data-page="{page}"' in response.text
        assert '<script src="/assets/dashboard.js"' in response.text
    script = client.get("/assets/dashboard.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "function lineChart" in script.text
    assert "http://" not in script.text.replace("http://www.w3.org/2000/svg", "")  # no CDN
    assert client.get("/run/nope").status_code == 404
    assert client.get("/study/brain-2").status_code == 404
    assert client.get("/assets/other.js").status_code == 404


def test_api_overview_and_run(client):
    overview = client.get("/api/overview").json()
    assert {r["name"]: r["status"] for r in overview["runs"]} == {
        "brain-1": "done",
        "brain-2": "running",
    }
    details = client.get("/api/run/brain-1").json()
    assert details["metrics"]["patch"]["valid_loss"] is None  # NaN in metrics.json → null
    assert len(details["history"]) == 4 and details["previews"]["version"] == 1
    compared = client.get("/api/compare?runs=brain-1,brain-2").json()
    assert [len(r["history"]) for r in compared["runs"]] == [4, 1]
    study = client.get("/api/study/brain-1/prune-20250101-000000").json()
    assert study["kind"] == "surgery" and len(study["rows"]) == 3
    assert client.get("/api/run/..").status_code == 404
    assert client.get("/api/compare?runs=brain-1,../x").status_code == 404


def test_files_under_the_runs_folder_are_served_with_their_type(client, runs):
    response = client.get("/files/brain-1/previews/case03/pred_z3.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == (runs / "brain-1/previews/case03/pred_z3.png").read_bytes()
    assert client.get("/files/brain-1/history.csv").text.startswith("stage,epoch")


@pytest.mark.parametrize(
    "url",
    [
        "/files/../secret.txt",
        "/files/%2e%2e/secret.txt",
        "/files/brain-1/%2e%2e/%2e%2e/secret.txt",
        "/files/..%2fsecret.txt",
        "/files/%2Fetc%2Fpasswd",
        "/files//etc/passwd",
        "/files/brain-1/escape",  # a link that leads outside
        "/files/brain-1/.history.csv.abc.tmp",  # a half-written file
        "/files/brain-1",  # a folder
        "/files/brain-1/..%5C..%5Csecret.txt",
    ],
)
def test_traversal_and_absolute_paths_get_404(client, url):
    response = client.get(url)
    assert response.status_code == 404
    assert "outside the runs folder" not in response.text


def test_inside_refuses_every_way_out(runs):
    assert inside(runs, "brain-1/run.json") == (runs / "brain-1/run.json").resolve()
    for path in [
        "",
        "/etc/passwd",
        "../secret.txt",
        "brain-1/../../secret.txt",
        "brain-1\\run.json",
    ]:
        assert inside(runs, path) is None, path


def test_nothing_writes_or_deletes(client, runs):
    before = sorted(str(p) for p in runs.rglob("*"))
    for method in ("post", "put", "delete", "patch"):
        for url in ("/", "/files/brain-1/run.json", "/api/run/brain-1", "/api/overview"):
            assert getattr(client, method)(url).status_code == 405, (method, url)
    assert sorted(str(p) for p in runs.rglob("*")) == before
    assert json.loads((runs / "brain-1/run.json").read_text())["kind"] == "brain"


def test_only_loopback_host_names_when_bound_to_loopback(runs):
    guarded = TestClient(
        create_app(runs, allowed_hosts_for("127.0.0.1")), base_url="http://127.0.0.1:8765"
    )
    assert guarded.get("/api/overview").status_code == 200
    assert guarded.get("/api/overview", headers={"host": "evil.example:8765"}).status_code == 400
    assert allowed_hosts_for("0.0.0.0") is None
    assert allowed_hosts_for("192.168.1.5") == ["192.168.1.5"]
