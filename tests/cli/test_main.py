import subprocess
import sys

from typer.testing import CliRunner

from braver.cli.main import app

runner = CliRunner()


def test_help_lists_every_group():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for group in ("data", "models", "train", "transfer", "prune", "predict", "evaluate"):
        assert group in result.output


def test_version():
    from braver import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_help_does_not_import_torch():
    code = (
        "import sys; from braver.cli.main import app; "
        "from typer.testing import CliRunner; CliRunner().invoke(app, ['--help']); "
        "print('torch' in sys.modules, 'fastai' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
