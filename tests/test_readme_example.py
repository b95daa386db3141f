"""The README's Python example runs (on six small phantoms) and is examples/notebook.py."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- python-example -->\n```python\n(.*?)\n```", text, re.S)
    assert match, "README.md has no python block after <!-- python-example -->"
    return match.group(1)


def test_the_example_script_is_the_readme_example():
    script = (ROOT / "examples" / "notebook.py").read_text()
    assert readme_example() in script


# shorter epochs for the test; each substitution must find its text, so the example cannot drift
SHORTER = {
    "patches_per_epoch=256": "patches_per_epoch=32",
    "valid_patches=64": "valid_patches=16",
    "num_it=20": "num_it=4",
}


@pytest.mark.slow
def test_the_readme_python_example_runs(tmp_path):
    code = readme_example()
    for old, new in SHORTER.items():
        assert old in code, old
        code = code.replace(old, new)
    (tmp_path / "example.py").write_text(code)
    env = {
        **os.environ,
        "BRAVER_PHANTOMS": "tiny",
        "BRAVER_CACHE": str(tmp_path / "cache"),
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, "example.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "whole_tumor_dice" in out and "liver" in out and "without conv2" in out
    run = tmp_path / "runs" / "notebook-brain"
    assert {"model.safetensors", "run.json", "recipe.toml"} <= {p.name for p in run.iterdir()}
