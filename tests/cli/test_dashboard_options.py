"""`braver dashboard`'s options reach the server (replaced by a recorder: nothing is served);
it binds the loopback address by default and warns when bound to another; the port probe."""

import socket

import pytest
from typer.testing import CliRunner

from braver.cli.main import app

runner = CliRunner()
WIDE = {"COLUMNS": "250"}


def _said(result) -> str:
    return " ".join(result.output.replace("│", " ").split())


@pytest.fixture
def served(monkeypatch):
    """serve and the port probe as recorders."""
    import braver.cli.dashboard as command
    import braver.dashboard.app as dashboard_app

    calls = {"serve": [], "probe": []}
    monkeypatch.setattr(
        command, "_check_port", lambda host, port: calls["probe"].append((host, port))
    )
    monkeypatch.setattr(
        dashboard_app, "serve", lambda root, **kwargs: calls["serve"].append((root, kwargs))
    )
    return calls


def test_by_default_only_this_machine_sees_the_runs(served, tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    result = runner.invoke(app, ["dashboard"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert served["serve"] == [(Path("runs"), {"host": "127.0.0.1", "port": 8765})]
    assert served["probe"] == [("127.0.0.1", 8765)]
    said = _said(result)
    assert "braver dashboard of runs at http://localhost:8765/ (Ctrl-C stops it)" in said
    assert "anyone" not in said


@pytest.mark.parametrize("host", ["localhost", "::1", "[::1]"])
def test_loopback_hosts_are_shown_as_localhost_without_a_warning(served, tmp_path, host):
    result = runner.invoke(app, ["dashboard", str(tmp_path), "--host", host], env=WIDE)
    assert result.exit_code == 0, result.output
    assert served["serve"] == [(tmp_path, {"host": host, "port": 8765})]
    assert "at http://localhost:8765/" in _said(result) and "anyone" not in _said(result)


def test_another_address_and_port_are_used_and_warned_about(served, tmp_path):
    args = ["dashboard", str(tmp_path), "--host", "0.0.0.0", "--port", "9001"]
    result = runner.invoke(app, args, env=WIDE)
    assert result.exit_code == 0, result.output
    assert served["serve"] == [(tmp_path, {"host": "0.0.0.0", "port": 9001})]
    assert served["probe"] == [("0.0.0.0", 9001)]
    said = _said(result)
    assert f"braver dashboard of {tmp_path} at http://0.0.0.0:9001/" in said
    assert "bound to 0.0.0.0: anyone who can reach this machine can read the runs" in said


def test_a_missing_folder_is_refused_before_anything_listens(served, tmp_path):
    result = runner.invoke(app, ["dashboard", str(tmp_path / "nope")], env=WIDE)
    assert result.exit_code == 2
    assert (
        f"{tmp_path / 'nope'}: runs folder not found; start a run with 'braver train', "
        "or pass the folder that holds your runs."
    ) in _said(result)
    assert served == {"serve": [], "probe": []}


@pytest.mark.parametrize("port", [0, 65536])
def test_a_port_out_of_range_is_refused(served, tmp_path, port):
    result = runner.invoke(app, ["dashboard", str(tmp_path), "--port", str(port)], env=WIDE)
    assert result.exit_code == 2 and "--port" in _said(result) and served["serve"] == []


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_the_port_probe_refuses_a_taken_port_in_one_sentence(family, host):
    from braver.cli.dashboard import _check_port
    from braver.errors import BraverError

    try:
        taken = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        pytest.skip("no IPv6 here")
    with taken:
        try:
            taken.bind((host, 0))
        except OSError:
            pytest.skip(f"cannot bind {host} here")
        taken.listen()
        port = taken.getsockname()[1]
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        with pytest.raises(BraverError) as error:
            _check_port(shown, port)
    assert str(error.value) == (
        f"cannot listen on {shown}:{port} (Address already in use); "
        f"pass another --port, e.g. --port {port + 1}."
    )
    _check_port(shown, port)  # free again: no error


def test_the_port_probe_lets_a_free_port_pass_and_reuses_the_address():
    """A dashboard just stopped leaves its port in TIME_WAIT; uvicorn binds with SO_REUSEADDR,
    so the port is free to it, and the probe (binding the same way) says so."""
    from braver.cli.dashboard import _check_port

    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's was
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server side closes first: its end waits in TIME_WAIT
        client.close()
    _check_port("127.0.0.1", port)
