import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_readme_quickstart_beats_bicubic_on_held_out_photographs(tmp_path):
    """The README's two-minute variant, `scripts/quickstart.sh` (its job, at the default length):
    a few CPU minutes of the tiny 4x model on bundled photographs beat bicubic PSNR on held-out
    photographs."""
    res = subprocess.run(
        [sys.executable, "-m", "jobs.quickstart", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["crops"] >= 10
    assert summary["psnr_sr"] > summary["psnr_bicubic"], summary
    assert "PSNR  SR" in res.stdout
    assert (tmp_path / "prompt_editing.png").is_file()
    assert (tmp_path / "checkpoint" / "checkpoint.json").is_file()


def test_readme_commands_are_the_scripts_ci_runs():
    readme = (ROOT / "README.md").read_text().split("\n")
    block = readme[readme.index("```bash") + 1 : readme.index("```bash") + 3]
    assert block[0].startswith("bash scripts/demo.sh")
    assert block[1].startswith("bash scripts/test.sh")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/demo.sh --check" in ci and "bash scripts/test.sh" in ci
    assert "bash scripts/quickstart.sh" in "\n".join(readme)
    for script in ("demo.sh", "quickstart.sh", "test.sh", "setup.sh"):
        assert (ROOT / "scripts" / script).is_file()
