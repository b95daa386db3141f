"""`braver dashboard` in a real browser: Debian's chromium, headless, driven by Playwright.

Skipped when chromium (``apt-get install -y chromium``) or playwright is missing.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")
sync_api = pytest.importorskip("playwright.sync_api")

_spec = importlib.util.spec_from_file_location(
    "fake_runs", Path(__file__).with_name("fake_runs.py")
)
fake = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dash") / "runs"
    done = fake.write_run(root, "brain-1")
    fake.write_run(root, "brain-2", status="running", stages={"stage1": 1})  # this process trains
    fake.write_transfer_study(root)
    fake.write_surgery_study(done)
    (root.parent / "secret.txt").write_text("outside the runs folder")
    return root


@pytest.fixture(scope="module")
def server(runs):
    """`braver dashboard RUNS --port N` in a child process; yields its base URL."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "braver.cli.main", "dashboard", str(runs), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.fail(f"the dashboard did not start: {process.stdout.read()}")
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    page.close()
    assert not errors, errors


def test_runs_list_shows_each_run_with_its_status(page, server):
    page.goto(server + "/")
    page.wait_for_selector("#runs-table")
    statuses = {
        row.get_attribute("data-run"): row.locator(".col-status").inner_text()
        for row in page.locator("#runs-table tbody tr").all()
    }
    assert statuses == {"brain-1": "done", "brain-2": "running"}
    assert page.locator("tr[data-run=brain-1] .col-epoch").inner_text() == "4 / 4"
    assert page.locator("tr[data-run=brain-2] .col-eta_seconds").inner_text() == "6 s"
    assert page.locator("#studies-table tbody tr").count() == 2


def test_run_page_draws_curves_with_the_stage_boundary(page, server):
    page.goto(server + "/run/brain-1")
    page.wait_for_selector("#curves figure.chart svg")
    titles = page.locator("#curves figure.chart").evaluate_all(
        "figures => figures.map(f => f.dataset.title)"
    )
    assert titles[:3] == ["Loss", "Dice (validation patches)", "Accuracy"]
    assert {"Learning rate", "Momentum", "Seconds per epoch"} <= set(titles)
    loss = page.locator('#curves polyline[data-series="valid loss"]')
    assert len(loss.get_attribute("points").split()) == 4
    assert page.locator("#curves .stage-label").first.text_content() == "stage1"
    assert page.locator("#curves .stage-mark").count() == len(titles)  # one boundary each
    rows = page.locator("#trainable tbody tr").all_inner_texts()
    assert [r.split("\t")[0] for r in rows] == ["stage1", "stage2"]


def test_slice_slider_changes_the_image(page, server):
    page.goto(server + "/run/brain-1")
    page.wait_for_selector("#slice-slider")
    image = page.locator("#pred-image")
    assert "/previews/case03/pred_z5.png" in image.get_attribute("src")  # the main slice
    assert page.locator("#slice-label").inner_text() == "z = 5 (2 of 3)"
    page.locator("#slice-slider").fill("2")
    assert "/previews/case03/pred_z7.png" in image.get_attribute("src")
    assert page.locator("#slice-label").inner_text() == "z = 7 (3 of 3)"
    page.wait_for_function("document.getElementById('pred-image').naturalWidth === 24")
    page.select_option("#preview-channel", "t1")
    assert page.locator("#truth-base").get_attribute("src").endswith("/case03/t1_z7.png")


def test_per_case_metrics_are_sorted_worst_first_and_link_to_slices(page, server):
    page.goto(server + "/run/brain-1")
    page.wait_for_selector("#case-metrics")
    cases = page.locator("#case-metrics tbody tr td.col-case").all_inner_texts()
    assert cases == ["case02", "case01", "case03"]  # whole-tumour Dice 0.5, 0.7, 0.9
    page.locator("#case-metrics th[data-key=whole_tumor_dice]").click()
    assert page.locator("#case-metrics tbody tr td.col-case").all_inner_texts()[0] == "case03"
    page.locator("a.case-link", has_text="case01").click()
    assert page.locator("#preview-case option:checked").inner_text() == "case01"
    assert "/previews/case01/pred_z3.png" in page.locator("#pred-image").get_attribute("src")


def test_a_running_run_updates_without_a_reload(page, browser, server, runs):
    folder = runs / "brain-2"
    page.goto(server + "/")
    cell = page.locator("tr[data-run=brain-2] .col-epoch")
    sync_api.expect(cell).to_have_text("1 / 4")
    run_page = browser.new_page()
    run_page.goto(server + "/run/brain-2")
    loss = run_page.locator('#curves polyline[data-series="valid loss"]')
    sync_api.expect(loss).to_have_count(1)
    assert len(loss.get_attribute("points").split()) == 1
    fake.append_epoch(folder, "stage1")
    fake.write_previews(folder, ["case03", "case01"], version=2)
    sync_api.expect(cell).to_have_text("2 / 4", timeout=10_000)
    run_page.wait_for_function(
        """() => {
            const line = document.querySelector('#curves polyline[data-series="valid loss"]');
            return line && line.getAttribute('points').split(' ').length === 2;
        }""",
        timeout=10_000,
    )
    run_page.wait_for_function(
        "document.getElementById('pred-image').dataset.version === '2'", timeout=10_000
    )
    assert run_page.locator("#pred-image").get_attribute("src").endswith("?v=2")
    assert run_page.locator(".facts .epoch").inner_text() == "2 / 4"
    run_page.close()


@pytest.mark.parametrize(
    "path",
    [
        "/files/../secret.txt",
        "/files/%2e%2e/secret.txt",
        "/files/brain-1/../../secret.txt",
        "/files/%2Fetc%2Fpasswd",
        "/files//etc/passwd",
        "/run/..%2F..%2Fsecret.txt",
    ],
)
def test_traversal_urls_get_404(server, path):
    """Sent byte for byte (a browser would tidy the ``..`` away before asking)."""
    host, port = server.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.putrequest("GET", path, skip_host=True)
    connection.putheader("Host", f"127.0.0.1:{port}")
    connection.endheaders()
    response = connection.getresponse()
    body = response.read().decode(errors="replace")
    assert response.status == 404 and "outside the runs folder" not in body


def test_the_browser_gets_404_for_traversal_too(page, server):
    response = page.request.get(server + "/files/%2e%2e/secret.txt")
    assert response.status == 404
    assert page.request.get(server + "/files/brain-1/run.json").status == 200


def test_comparison_of_two_runs(page, server):
    page.goto(server + "/")
    page.wait_for_selector("#runs-table")
    assert page.locator("#compare-button").is_disabled()
    for name in ("brain-1", "brain-2"):
        page.locator(f"tr[data-run={name}] input.pick").check()
    page.locator("#compare-button").click()
    page.wait_for_selector("#compare-charts svg")
    assert page.url.endswith("/compare?runs=brain-1,brain-2")
    series = page.locator("#compare-charts figure").first.locator("polyline")
    assert sorted(series.evaluate_all("lines => lines.map(l => l.dataset.series)")) == [
        "brain-1",
        "brain-2",
    ]
    page.select_option("#compare-metric", "whole_tumor_dice")
    assert page.locator("#compare-charts figure").first.get_attribute("data-title") == (
        "whole tumor dice"
    )
    assert page.locator("#compare-summary tbody tr").count() == 2


def test_transfer_and_surgery_studies(page, server):
    page.goto(server + "/study/transfer-liver-20250101-000000")
    page.wait_for_selector("#study-table")
    assert page.locator("#study-table tbody tr td.col-setup").all_inner_texts() == ["local", "none"]
    assert page.locator("figure.bar-chart rect.bar").count() == 2 * 4  # 2 setups × 4 scores
    page.goto(server + "/study/brain-1/prune-20250101-000000")
    page.wait_for_selector("#study-table")
    deltas = page.locator("#study-table td.col-delta_whole_tumor_dice").all_inner_texts()
    assert deltas == ["—", "-0.2000", "-0.0500"]
    assert page.locator("figure.bar-chart rect.bar").count() == 2  # intact has no Δ


def test_report_html_opens_offline(browser, runs):
    from braver.report import write_report_html

    report = write_report_html(runs / "brain-1")
    page = browser.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(report.as_uri())
    page.wait_for_selector("#curves svg")
    assert (
        len(
            page.locator('#curves polyline[data-series="valid loss"]')
            .get_attribute("points")
            .split()
        )
        == 4
    )
    before = page.locator("#pred-image").get_attribute("src")
    assert before.startswith("data:image/png;base64,")
    page.locator("#slice-slider").fill("0")
    assert page.locator("#pred-image").get_attribute("src") not in ("", before)
    assert page.locator("#case-metrics tbody tr").count() == 3
    assert requests == [report.as_uri()]  # nothing else was fetched
    page.close()
    data = json.loads(report.read_text().split('id="braver-data">', 1)[1].split("</script>")[0])
    assert data["run"]["summary"]["status"] == "done"
