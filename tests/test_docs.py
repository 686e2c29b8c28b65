"""Meta-tests: every hook is documented with its exact signature and has a test, every CLI command
and option is documented, and CI runs the test command the README promises."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import click
import pytest

from phi_quant.cli import cli
from phi_quant.hookspecs import PhiQuantSpec

ROOT = Path(__file__).resolve().parent.parent
HOOKS = sorted(n for n, f in inspect.getmembers(PhiQuantSpec, inspect.isfunction) if not n.startswith("_"))


def _signature(name: str) -> str:
    params = [p for p in inspect.signature(getattr(PhiQuantSpec, name)).parameters if p != "self"]
    return f"{name}({', '.join(params)})"


def test_every_hook_is_in_the_spec():
    assert HOOKS == ["backend_info", "detect_hardware", "export", "load_model", "quantize", "supported_precisions",
                     "tensor_plan"]


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_with_its_exact_signature(hook):
    headings = re.findall(r"^### `([^`]+)`\s*$", (ROOT / "docs" / "plugins.md").read_text(), flags=re.M)
    assert _signature(hook) in headings, f"docs/plugins.md needs a '### `{_signature(hook)}`' section"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    pattern = re.compile(rf"^\s*def test_hook_{hook}\w*\(", re.M)
    tests = [p for p in (ROOT / "tests").glob("test_*.py") if pattern.search(p.read_text())]
    assert tests, f"no test named test_hook_{hook}_... in tests/"


def _commands() -> list[tuple[str, click.Command]]:
    return sorted(cli.commands.items())


@pytest.mark.parametrize("name, command", _commands(), ids=[n for n, _ in _commands()])
def test_cli_command_and_its_options_are_documented(name, command):
    text = (ROOT / "docs" / "cli.md").read_text()
    match = re.search(rf"^## `phi-quant {name}\b[^\n]*\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"docs/cli.md needs a '## `phi-quant {name} ...`' section"
    section = match.group(0)
    for param in command.params:
        if isinstance(param, click.Option) and "--help" not in param.opts:
            assert any(opt in section for opt in param.opts + param.secondary_opts), (
                f"option {param.opts[0]} of 'phi-quant {name}' is not documented in docs/cli.md"
            )


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    quick = re.search(r"## Quick start.*?```(?:sh|console|bash)?\n(.*?)```", readme, flags=re.S)
    assert quick, "README.md needs a Quick start code block"
    commands = [ln.strip() for ln in quick.group(1).splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert len(commands) == 2, f"the quick start must be exactly two commands, got {commands}"
    ci = (ROOT / ".ci" / "run").read_text()
    ci_commands = [ln.strip() for ln in ci.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert commands[1] in ci_commands, ".ci/run must call the README's test command"


def test_every_error_type_is_documented_with_its_exit_code_an_example_and_what_to_do():
    import phi_quant.errors as errors

    text = (ROOT / "docs" / "errors.md").read_text()
    types = [n for n in errors.__all__ if isinstance(getattr(errors, n), type)]
    for name in types:
        match = re.search(rf"^## `{name}`\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
        assert match, f"docs/errors.md needs a '## `{name}`' section"
        section = match.group(1)
        assert f"Exit {getattr(errors, name).exit_code}." in section, f"{name}: state its exit code"
        if name != "PhiQuantError":
            assert "> Error: " in section or "> FAILED" in section, f"{name}: give an example message"
            assert "What to do" in section, f"{name}: say what the user does next"
    documented = re.findall(r"^## `(\w+)`", text, flags=re.M)
    assert sorted(documented) == sorted(types), "docs/errors.md documents exactly the error types"
