"""The MLflow adapter: the only module of fleetscore that imports ``mlflow``.

A release is ONE registered model version (one per fleet, name ``TrainingConfig.model_name``) whose
pyfunc flavour is logged from code (``training/pyfunc_model.py``) with the release bundle as an
artifact, so loading never unpickles. Aliases ``champion`` and ``challenger`` point at versions; every
alias move is kept in the registered model's tags (``fleetscore.alias_move.NNNNNN``) because MLflow
keeps no history of them (the release pipeline also writes it to SQL). ``import mlflow`` alone costs
1-2 s: other modules import this one inside the functions that need it.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fleetscore.errors import RegistryError, RegistryUnavailable, ReleaseNotFound
from fleetscore.redact import redact
from fleetscore.training.bundle import BUNDLE_SHA_TAG, bundle_digest, verify_bundle

__all__ = ["ReleaseNotFound", "ResolvedRelease", "log_run", "resolve_release"]

log = logging.getLogger(__name__)

ALIASES = ("champion", "challenger")
MOVE_TAG = "fleetscore.alias_move."
TRAINING_EXPERIMENT = "fleetscore-training"
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
_PACKAGE_DIRS = (Path(__file__).parents[1],)  # the fleetscore package: code_paths puts it on sys.path


@dataclass(frozen=True)
class ResolvedRelease:
    """A registered release: its version, its bundle folder (local, downloaded once) and its tags."""

    version: int
    bundle_dir: Path
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    run_id: str = ""


@dataclass(frozen=True)
class AliasMove:
    """One move of an alias: when, who, which alias, from which version to which, and why."""

    time: str
    user: str
    alias: str
    from_version: int | None
    to_version: int
    reason: str


# MLflow's HTTP client retries 7 times with a backoff factor of 2 by default (minutes against an
# unreachable server): bounded here unless the user set them
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND", "ENDPOINT_NOT_FOUND")


def _mlflow() -> Any:
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    import mlflow

    return mlflow


def default_artifact_location(tracking_uri: str) -> str | None:
    """For a local ``sqlite:///DIR/FILE.db`` store: ``DIR/mlartifacts`` (next to the database)."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///"):])
        return str((path.parent / "mlartifacts").resolve())
    return None


def _client(tracking_uri: str) -> Any:
    mlflow = _mlflow()
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if tracking_uri.startswith("azureml://"):
        _probe_azureml(client, tracking_uri)
    return client


_REACHED: set[str] = set()


def _probe_azureml(client: Any, tracking_uri: str) -> None:
    """One cheap registry call per process, so that an unreachable workspace or a missing credential is one
    line naming the URI rather than the azureml-mlflow plugin's traceback at the first real call."""
    if tracking_uri in _REACHED:
        return
    from azure.core.exceptions import AzureError
    from mlflow.exceptions import MlflowException

    try:
        client.search_registered_models(max_results=1)
    except (AzureError, MlflowException, OSError) as exc:
        raise RegistryError(
            f"tracking_uri {_shown(tracking_uri)}: cannot reach the Azure ML workspace's MLflow "
            f"({type(exc).__name__}); log in (az login, or the workflow's azure/login) and check the URI"
        ) from exc
    _REACHED.add(tracking_uri)


def _tracking_uri_of(client: Any) -> str:
    return str((getattr(client, "_tracking_client", None) and client._tracking_client.tracking_uri) or "")


def _shown(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.password:
        return uri.replace(f":{parts.password}@", ":****@", 1)
    return uri


def _experiment_id(client: Any, tracking_uri: str, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    location = default_artifact_location(tracking_uri)
    if location is not None:
        location = Path(location).as_uri()
    from mlflow.exceptions import MlflowException

    try:
        return str(client.create_experiment(name, artifact_location=location))
    except MlflowException as exc:
        # two schedulers (or a scheduler and a release) creating it at once: the other one was first
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def _mlflow_errors() -> tuple[type[BaseException], ...]:
    from mlflow.exceptions import MlflowException

    return (MlflowException, OSError)


def log_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    tags: Mapping[str, Any],
    artifacts: Mapping[str, Path] | None = None,
) -> str:
    """Log one finished MLflow run (params, metrics, tags, files or folders); return its run id."""
    client = _client(tracking_uri)
    try:
        run = client.create_run(_experiment_id(client, tracking_uri, experiment), run_name=run_name,
                                tags={k: redact(v) for k, v in tags.items()})
        run_id = str(run.info.run_id)
        _log_batch(client, run_id, params, metrics)
        for name, path in (artifacts or {}).items():
            if Path(path).is_dir():
                client.log_artifacts(run_id, str(path), artifact_path=name)
            else:
                client.log_artifact(run_id, str(path), artifact_path=name)
        client.set_terminated(run_id, "FINISHED")
    except _mlflow_errors() as exc:
        raise RegistryError(f"tracking_uri {_shown(tracking_uri)}: cannot log run {run_name!r}: {exc}") from exc
    return run_id


def _log_batch(client: Any, run_id: str, params: Mapping[str, Any], metrics: Mapping[str, float],
               tags: Mapping[str, Any] | None = None) -> None:
    from mlflow.entities import Metric, Param, RunTag

    now = int(datetime.now(UTC).timestamp() * 1000)
    param_list = [Param(k, redact(v)[:6000]) for k, v in params.items()]
    metric_list = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
    tag_list = [RunTag(k, redact(v)[:5000]) for k, v in (tags or {}).items()]
    for i in range(0, max(len(param_list), len(metric_list), len(tag_list)), 100):
        client.log_batch(run_id, metrics=metric_list[i:i + 100], params=param_list[i:i + 100],
                         tags=tag_list[i:i + 100])


def _run_tags(version_tags: Mapping[str, Any]) -> dict[str, str]:
    """The release's tags on its training run too, with the commit under MLflow's own tag name (the
    run page's "Source" links it)."""
    tags = {k: str(v) for k, v in version_tags.items()}
    commit = tags.get("fleetscore.git_commit", "")
    if commit and commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    return tags


def pip_requirements() -> list[str]:
    """The pinned packages the pyfunc model needs (explicit: inferring them costs ~3 s a model)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "numpy", "pandas", "scikit-learn", "pyarrow")]


def register_release(
    tracking_uri: str,
    model_name: str,
    bundle_dir: Path,
    run_name: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    version_tags: Mapping[str, Any],
    tables: Mapping[str, Path] | None = None,
    experiment: str = TRAINING_EXPERIMENT,
) -> tuple[int, str]:
    """Log the training run and register the bundle as a new version of ``model_name``.

    ``tables`` are files (e.g. the per-device metrics Parquet) logged as run artifacts. Returns
    ``(version, run_id)``.
    """
    mlflow = _mlflow()
    client = _client(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        experiment_id = _experiment_id(client, tracking_uri, experiment)
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
            run_id = str(run.info.run_id)
            _log_batch(client, run_id, params, metrics, _run_tags(version_tags))
            for name, path in (tables or {}).items():
                client.log_artifact(run_id, str(path), artifact_path=name)
            info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(PYFUNC_CODE),
                    artifacts={"bundle": str(bundle_dir)},
                    code_paths=[str(p) for p in _PACKAGE_DIRS],
                    pip_requirements=pip_requirements(),
                    signature=_readings_signature(),
                    input_example=_input_example(bundle_dir),
                    registered_model_name=model_name,
            )
        version = int(info.registered_model_version)
        tags = {**version_tags, BUNDLE_SHA_TAG: bundle_digest(bundle_dir)}
        for key, value in tags.items():
            client.set_model_version_tag(model_name, str(version), key, str(value))
    except _mlflow_errors() as exc:
        raise RegistryError(f"model {model_name}: registration failed: {exc}") from exc
    return version, run_id


def _readings_signature() -> Any:
    """The pyfunc's input: readings. Ids and times as "any", so that integer device ids or string
    times (as ``pd.read_csv`` gives them) are accepted; the model normalises them itself. Output: the
    readings with ``Score``, ``Prediction``, ``Reason`` (null without a model) and ``Status``."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema, TensorSpec

    readings: list[ColSpec | TensorSpec] = [ColSpec(AnyType(), "TS"), ColSpec(AnyType(), "Device"),
                                            ColSpec(AnyType(), "Sensor"), ColSpec("double", "Value")]
    scored: list[ColSpec | TensorSpec] = [ColSpec("double", "Score", required=False),
                                          ColSpec("integer", "Prediction", required=False),
                                          ColSpec("string", "Reason", required=False), ColSpec("string", "Status")]
    return ModelSignature(inputs=Schema(readings), outputs=Schema(readings + scored))


def _input_example(bundle_dir: Path) -> Any:
    """Three readings of the release's first series (or of a made-up one for an empty release)."""
    import pandas as pd

    manifest = json.loads((Path(bundle_dir) / "manifest.json").read_text())
    series = manifest.get("series") or [{}]
    first = series[0] if isinstance(series, list) and isinstance(series[0], dict) else {}
    device, sensor = str(first.get("device", "device-1")), str(first.get("sensor", "sensor-1"))
    ts = pd.date_range("2026-01-01", periods=3, freq="1s").strftime("%Y-%m-%dT%H:%M:%S")
    example = pd.DataFrame({"TS": list(ts), "Device": device, "Sensor": sensor, "Value": [1.0, 1.5, 2.0]})
    # object dtypes, columns included: mlflow 3.15 cannot serialise pandas' "str" dtype (infer_string)
    example = example.astype({"TS": object, "Device": object, "Sensor": object})
    example.columns = pd.Index(list(example.columns), dtype=object)
    return example


def set_version_tags(tracking_uri: str, model_name: str, version: int, tags: Mapping[str, Any]) -> None:
    """Set tags on an existing model version."""
    client = _client(tracking_uri)
    try:
        for key, value in tags.items():
            client.set_model_version_tag(model_name, str(version), key, str(value))
    except _mlflow_errors() as exc:
        raise RegistryError(f"model {model_name} v{version}: cannot set tags: {exc}") from exc


def _version_of(client: Any, model_name: str, release: str) -> Any:
    from mlflow.exceptions import MlflowException

    release = str(release).strip()
    try:
        if release.lstrip("v").isdigit():
            return client.get_model_version(model_name, release.lstrip("v"))
        return client.get_model_version_by_alias(model_name, release)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") not in _NOT_FOUND:
            raise RegistryUnavailable(f"MLflow at {redact(_tracking_uri_of(client))} did not answer: "
                                      f"{redact(' '.join(str(exc).split()))[:300]}") from exc
        what = f"version {release.lstrip('v')}" if release.lstrip("v").isdigit() else f"alias {release!r}"
        raise ReleaseNotFound(f"model {model_name}: no {what} in the registry") from exc


def resolve_release(tracking_uri: str, model_name: str, release: str, cache_dir: Path | None = None) -> ResolvedRelease:
    """The release named by ``release`` ('champion', 'challenger' or a version number), bundle downloaded.

    Bundles are cached (versions are immutable) under ``cache_dir``, by default a folder in the
    system temp directory keyed by the tracking URI, the version and its run id.
    """
    client = _client(tracking_uri)
    mv = _version_of(client, model_name, release)
    version = int(mv.version)
    run_id = str(mv.run_id or "")
    key = hashlib.sha256(f"{tracking_uri}|{model_name}".encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "fleetscore-releases"
    target = root / key / f"v{version}-{(run_id or str(mv.creation_timestamp))[:12]}"
    if not (target / "manifest.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
        try:
            uri = client.get_model_version_download_uri(model_name, str(version))
            from mlflow.artifacts import download_artifacts

            local = Path(download_artifacts(artifact_uri=f"{uri.rstrip('/')}/artifacts/bundle",
                                            dst_path=str(tmp), tracking_uri=tracking_uri))
            if target.exists():
                shutil.rmtree(target)
            os.replace(local, target)
        except _mlflow_errors() as exc:
            raise RegistryError(f"model {model_name} v{version}: cannot download the bundle: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    expected = (mv.tags or {}).get(BUNDLE_SHA_TAG)
    if expected:  # on every resolve, the cached copy included
        verify_bundle(target, expected, f"release v{version} of {model_name}")
    else:
        log.warning("model %s v%d: no %s tag (registered before it existed); bundle not verified", model_name,
                    version, BUNDLE_SHA_TAG)
    return ResolvedRelease(version=version, bundle_dir=target, tags=dict(mv.tags or {}),
                           aliases=tuple(getattr(mv, "aliases", ()) or ()), run_id=run_id)


def current_alias(tracking_uri: str, model_name: str, alias: str) -> int | None:
    """The version ``alias`` points at, ``None`` when unset or when the model does not exist yet."""
    try:
        return resolve_version(tracking_uri, model_name, alias)
    except ReleaseNotFound:
        return None


def version_tags(tracking_uri: str, model_name: str, release: str) -> tuple[int, dict[str, str]]:
    """The version number and tags of ``release`` (alias or number), without downloading anything."""
    found = _version_of(_client(tracking_uri), model_name, release)
    return int(found.version), dict(found.tags or {})


def resolve_version(tracking_uri: str, model_name: str, release: str) -> int:
    """The version number of ``release`` (alias or number), without downloading anything."""
    return int(_version_of(_client(tracking_uri), model_name, release).version)


def move_alias(
    tracking_uri: str, model_name: str, alias: str, version: int, reason: str, user: str | None = None
) -> AliasMove:
    """Point ``alias`` at ``version`` and record the move in the registered model's tags."""
    client = _client(tracking_uri)
    previous = current_alias(tracking_uri, model_name, alias)
    move = AliasMove(time=datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="seconds"),
                     user=user or _user(), alias=alias, from_version=previous, to_version=int(version),
                     reason=reason)
    try:
        client.set_registered_model_alias(model_name, alias, str(version))
        count = len(alias_history(tracking_uri, model_name))
        client.set_registered_model_tag(model_name, f"{MOVE_TAG}{count + 1:06d}", json.dumps(move.__dict__))
    except _mlflow_errors() as exc:
        raise RegistryError(f"model {model_name}: cannot move alias {alias!r} to v{version}: {exc}") from exc
    return move


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def alias_history(tracking_uri: str, model_name: str) -> list[AliasMove]:
    """Every recorded alias move of ``model_name``, oldest first (empty when the model does not exist)."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        model = client.get_registered_model(model_name)
    except MlflowException:
        return []
    moves = sorted((k, v) for k, v in (model.tags or {}).items() if k.startswith(MOVE_TAG))
    return [AliasMove(**json.loads(v)) for _, v in moves]


def list_versions(tracking_uri: str, model_name: str) -> list[dict[str, Any]]:
    """Every version of ``model_name``, newest first: version, created, run id, aliases, tags."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        model = client.get_registered_model(model_name)
        versions = client.search_model_versions(f"name = '{model_name}'", max_results=10000)
    except MlflowException as exc:
        raise ReleaseNotFound(f"model {model_name}: not in the registry (no release yet)") from exc
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    out = []
    for mv in sorted(versions, key=lambda v: int(v.version), reverse=True):
        out.append({
            "version": int(mv.version),
            "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).replace(tzinfo=None),
            "run_id": mv.run_id,
            "aliases": sorted(aliases.get(str(mv.version), [])),
            "tags": dict(mv.tags or {}),
        })
    return out
