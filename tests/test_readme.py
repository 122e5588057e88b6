"""The README's set-up commands and .ci/run must not drift apart."""

import pathlib
import re

ROOT = pathlib.Path(__file__).parents[1]


def _commands():
    readme = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", readme)


def test_readme_starts_with_demo_and_test_commands():
    demo, tests = _commands()[:2]
    assert demo == "pip install -e . && python -m jaxsolve"
    assert "pytest" in tests and tests.startswith("pip install")


def test_ci_runs_the_readme_test_command_verbatim():
    test_command = _commands()[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci
