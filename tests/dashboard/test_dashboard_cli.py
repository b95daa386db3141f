"""`braver dashboard`: defaults, and one clear sentence for a missing folder or a taken port."""

from __future__ import annotations

import socket

from typer.testing import CliRunner

from braver.cli.main import app


def test_defaults_bind_loopback_port_8765(tmp_path, monkeypatch):
    import braver.cli.dashboard as command
    import braver.dashboard.app as dashboard_app

    calls = []
    monkeypatch.setattr(command, "_check_port", lambda host, port: None)  # 8765 may be taken
    monkeypatch.setattr(
        dashboard_app, "serve", lambda root, host, port: calls.append((root, host, port))
    )
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    result = CliRunner().invoke(app, ["dashboard"])
    assert result.exit_code == 0, result.output
    assert calls == [(tmp_path.joinpath("runs").relative_to(tmp_path), "127.0.0.1", 8765)]
    assert "http://localhost:8765/" in result.output


def test_a_missing_runs_folder_is_one_sentence(tmp_path):
    result = CliRunner().invoke(app, ["dashboard", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "runs folder not found" in result.output and "braver train" in result.output


def test_a_taken_port_is_one_sentence(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["dashboard", str(tmp_path), "--port", str(port)])
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.output
    assert f"--port {port + 1}" in result.output
