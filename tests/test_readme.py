"""The README's two quick-start commands stay true: .ci/run installs and tests exactly as they say."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def _ci_commands() -> list[str]:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    return [" ".join(line.replace(" -q", "").split()) for line in lines if line and not line.startswith("#")]


def test_readme_install_steps_are_what_ci_runs():
    install, tests = _bash_blocks()[:2]
    steps = [" ".join(step.split()) for step in install.strip().split("&&")]
    assert steps[-1] == ".venv/bin/specdec-train recipe=medusa1"
    ci = _ci_commands()
    for step in steps[:-1]:
        assert step in ci, f"README step not in .ci/run: {step}"
    assert " ".join(tests.split()) == ci[-1]


def test_torch_is_pinned_to_the_cpu_wheel_where_installs_read():
    assert "pip install torch==2.13.0" in (ROOT / "README.md").read_text()
    assert "pip install -q torch==2.13.0" in (ROOT / ".ci" / "run").read_text()
