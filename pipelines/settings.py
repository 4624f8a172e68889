"""Typed settings, resolved once at the entry point.

Precedence: flags > ``FLEETSCORE_*`` environment > ``fleetscore.toml`` > defaults. Defaults keep all
state under ``./.fleetscore/``. Each layer owns the dataclass of its section (``ingestion.config``,
``data_checks.config``, ``training.config``, ``scoring.config``, ``pipelines.azureml_config``); this
module only composes and fills them.

Environment names: top-level keys as ``FLEETSCORE_DATABASE_URL``; section keys as
``FLEETSCORE_TRAINING__NU`` (section, two underscores, key). Lists are comma-separated; mappings
and tuples may be given as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetscore.data_checks.config import CheckConfig
from fleetscore.errors import ConfigError
from fleetscore.ingestion.config import IngestConfig
from fleetscore.pipelines.alerts_config import AlertsConfig
from fleetscore.pipelines.azureml_config import AzureMLConfig
from fleetscore.redact import redact
from fleetscore.scoring.config import ScoringConfig
from fleetscore.training.config import TrainingConfig

ENV_PREFIX = "FLEETSCORE_"
CONFIG_FILE = "fleetscore.toml"
log = logging.getLogger(__name__)

SECRET_WORDS = ("password", "secret", "key", "token", "connection_string", "sig")


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to know, resolved once."""

    home: str = ".fleetscore"
    database_url: str = ""
    tracking_uri: str = ""
    storage_url: str = ""
    executor: str = "local"
    workers: int = 0  # 0: one per core
    shared_disk: bool = False  # dask:// workers see this machine's disk (a LocalCluster, a shared filesystem)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    data_checks: CheckConfig = field(default_factory=CheckConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    azureml: AzureMLConfig = field(default_factory=AzureMLConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)

    def __post_init__(self) -> None:
        home = Path(self.home)
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{home / 'fleetscore.db'}")
        if not self.tracking_uri:
            object.__setattr__(self, "tracking_uri", f"sqlite:///{home / 'mlflow.db'}")
        if not self.storage_url:
            object.__setattr__(self, "storage_url", str(home / "blob"))
        if not (self.executor in ("local", "azureml") or self.executor.startswith("dask://")):
            raise ConfigError(
                f"executor: expected 'local', 'dask://HOST:PORT' or 'azureml', got {self.executor!r}"
            )

    def as_dict(self, mask_secrets: bool = True) -> dict[str, Any]:
        """The resolved settings as plain data, secrets masked unless told otherwise."""
        data = dataclasses.asdict(self)
        return _mask(data) if mask_secrets else data


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve settings: ``overrides`` (flags; ``None`` values ignored) > environment > file > defaults.

    ``config_file`` defaults to ``./fleetscore.toml`` when it exists; a file named explicitly must exist.
    Section keys in ``overrides`` are written ``section.key``.
    """
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    path = config_file or environ.get(ENV_PREFIX + "CONFIG")
    if path is not None:
        _deep_update(merged, _read_toml(Path(path), required=True))
    elif Path(CONFIG_FILE).exists():
        _deep_update(merged, _read_toml(Path(CONFIG_FILE), required=False))
    _deep_update(merged, _from_environ(environ))
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, name = key.rpartition(".")
        target = merged.setdefault(section, {}) if section else merged
        target[name] = value
    return _build(Settings, merged, "")


def _read_toml(path: Path, required: bool) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        if required:
            raise ConfigError(f"{path}: config file not found") from exc
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def _from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    """``FLEETSCORE_*`` variables as settings. Unknown names are ignored with a warning: the environment
    is shared with other tools, so a stray variable must not stop every command (a typo in
    fleetscore.toml or a flag still fails)."""
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    out: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        key = name[len(ENV_PREFIX):].lower()
        section, sep, sub = key.partition("__")
        field_ = fields.get(section if sep else key)
        if field_ is not None and sep and _is_section(field_):
            section_cls: Any = field_.default_factory  # type: ignore[misc]
            if sub in {f.name for f in dataclasses.fields(section_cls)}:
                out.setdefault(section, {})[sub] = value
                continue
        elif field_ is not None and not sep and not _is_section(field_):
            out[key] = value
            continue
        log.warning("ignoring unknown environment variable %s", name)
    return out


def _is_section(field_: dataclasses.Field[Any]) -> bool:
    return dataclasses.is_dataclass(field_.default_factory)  # type: ignore[arg-type]


def _deep_update(target: dict[str, Any], source: Mapping[str, Any]) -> None:
    for key, value in source.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = dict(value) if isinstance(value, Mapping) else value


def _build(cls: type[Any], data: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown setting {where}{unknown[0]}; known: {', '.join(sorted(known))}")
    kwargs = {}
    for name, raw in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(raw, Mapping):
                raise ConfigError(f"setting {where}{name}: expected a table of settings")
            kwargs[name] = _build(hint, raw, f"{where}{name}.")  # type: ignore[arg-type]
        else:
            kwargs[name] = _coerce(raw, hint, f"{where}{name}")
    return cls(**kwargs)


def _coerce(raw: Any, hint: Any, name: str) -> Any:  # noqa: C901  one branch per type a setting may have
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    try:
        if origin in (typing.Union, types.UnionType):
            errors = []
            for option in args:
                try:
                    return _coerce(raw, option, name)
                except ConfigError as exc:
                    errors.append(str(exc))
            raise ConfigError(errors[-1])
        if hint is Any:
            return raw
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if hint in (int, float):
            if isinstance(raw, bool):
                raise ValueError(raw)
            if hint is int and isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return hint(raw)
        if hint is str:
            if isinstance(raw, (dict, list)):
                raise ValueError(raw)
            return str(raw)
        if origin in (tuple, list):
            items = raw
            if isinstance(raw, str):
                items = json.loads(raw) if raw.strip().startswith("[") else [s for s in raw.split(",") if s.strip()]
            if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(v.strip() if isinstance(v, str) else v, args[0], name) for v in items)
            if origin is tuple:
                if len(items) != len(args):
                    raise ValueError(raw)
                return tuple(_coerce(v, a, name) for v, a in zip(items, args, strict=True))
            return [_coerce(v, args[0], name) for v in items]
        if origin is dict:
            items = json.loads(raw) if isinstance(raw, str) else raw
            if not isinstance(items, Mapping):
                raise ValueError(raw)
            return {_coerce(k, args[0], name): _coerce(v, args[1], name) for k, v in items.items()}
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"setting {name}: cannot read {raw!r} as {_type_name(hint)}") from exc
    raise ConfigError(f"setting {name}: unsupported type {hint!r}")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _mask(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _mask(v, k) for k, v in value.items()}
    if isinstance(value, str):
        if any(word in key.lower() for word in SECRET_WORDS) and value:
            return "****"
        return mask_url(value)
    return value


def mask_url(value: str) -> str:
    """Hide the password of a URL (``postgresql://u:pw@h/db`` -> ``postgresql://u:****@h/db``) and
    secret-looking query or connection-string parts: :func:`fleetscore.redact.redact`."""
    return redact(value)
