"""Secrets never reach output, logs, run records, reports or MLflow (issue 15): one redaction function,
a secret of each kind, through each failing command."""

from __future__ import annotations

import io
import logging
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleetscore.pipelines.cli import main
from fleetscore.records.run_log import RunLog
from fleetscore.redact import RedactingFilter, redact

S = "S3cr3tValue"  # every secret below contains it; no output may
SECRETS = {
    "url password": (f"postgresql://fleet:{S}@127.0.0.1:1/db", "postgresql://fleet:****@127.0.0.1:1/db"),
    "query password": (f"postgresql://fleet@127.0.0.1:1/db?password={S}&sslmode=require",
                       "postgresql://fleet@127.0.0.1:1/db?password=****&sslmode=require"),
    "mssql url": (f"mssql+pyodbc://sa:{S}@127.0.0.1:1/db?driver=ODBC+Driver+18",
                  "mssql+pyodbc://sa:****@127.0.0.1:1/db?driver=ODBC+Driver+18"),
    "odbc_connect": (f"mssql+pyodbc:///?odbc_connect=DRIVER%3D%7BODBC%7D%3BSERVER%3D127.0.0.1%3BUID%3Dsa%3BPWD%3D{S}%3B",
                     "mssql+pyodbc:///?odbc_connect=DRIVER%3D%7BODBC%7D%3BSERVER%3D127.0.0.1%3BUID%3Dsa%3BPWD%3D****%3B"),
    "odbc_connect plain": (f"mssql+pyodbc:///?odbc_connect=DRIVER={{ODBC}};SERVER=h;UID=sa;PWD={S};",
                           "mssql+pyodbc:///?odbc_connect=DRIVER={ODBC};SERVER=h;UID=sa;PWD=****;"),
    "account key": (f"DefaultEndpointsProtocol=https;AccountName=a;AccountKey={S}+x/y==;EndpointSuffix=x.net",
                    "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=****;EndpointSuffix=x.net"),
    "sas token": (f"https://a.blob.core.windows.net/c?sv=2024-01-01&sp=r&sig={S}%2B%3D",
                  "https://a.blob.core.windows.net/c?sv=2024-01-01&sp=r&sig=****"),
    "event hubs": (f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=listen;SharedAccessKey={S}=",
                   "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=listen;SharedAccessKey=****"),
    "tracking uri": (f"http://user:{S}@127.0.0.1:1", "http://user:****@127.0.0.1:1"),
    "json": (f'{{"password": "{S}", "user": "u"}}', '{"password": "****", "user": "u"}'),
    "bearer": (f"Authorization: Bearer {S}.abc", "Authorization: Bearer ****"),
}


@pytest.mark.parametrize("kind", sorted(SECRETS))
def test_redact_masks_each_kind(kind: str) -> None:
    text, expected = SECRETS[kind]
    assert redact(text) == expected
    assert redact(f"Error: cannot connect to {text} (refused)") == f"Error: cannot connect to {expected} (refused)"


@pytest.mark.parametrize("text", ["sqlite:///x.db", "http://host:5000/api", "no alias 'champion' in the registry",
                                  "SharedAccessKeyName=listen", "az://c/p?sv=1"])
def test_redact_leaves_the_rest(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize("kind", ["url password", "query password", "mssql url", "odbc_connect", "odbc_connect plain"])
def test_a_failing_ingest_prints_no_database_password(home: Path, kind: str) -> None:
    (home / "r.csv").write_text("TS,Device,Sensor,Value\n2026-01-05T00:00:00,d1,s1,1\n")
    result = CliRunner().invoke(main, ["--database-url", SECRETS[kind][0], "ingest", "r.csv"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1
    assert S not in result.output


@pytest.mark.parametrize("kind", ["url password", "query password", "mssql url", "odbc_connect"])
def test_config_masks_every_secret(home: Path, kind: str) -> None:
    env = {"FLEETSCORE_DATABASE_URL": SECRETS[kind][0], "FLEETSCORE_TRACKING_URI": SECRETS["tracking uri"][0],
           "FLEETSCORE_SCORING__STORAGE_CONNECTION_STRING": SECRETS["account key"][0],
           "FLEETSCORE_INGEST__EVENTHUB_CONNECTION_STRING": SECRETS["event hubs"][0],
           "FLEETSCORE_STORAGE_URL": "az://c/p?sig=" + S}
    result = CliRunner().invoke(main, ["config"], env=env)
    assert result.exit_code == 0, result.output
    assert S not in result.output


@pytest.mark.parametrize("kind", ["mssql url", "odbc_connect", "query password"])
def test_publish_refuses_a_database_password_and_writes_no_yaml(home: Path, kind: str) -> None:
    from tests.pipelines.test_azureml import AZURE_ENV, REMOTE

    out = home / "out"
    args = ["--database-url", SECRETS[kind][0], "--tracking-uri", REMOTE["tracking_uri"], "--storage-url",
            REMOTE["storage_url"], "publish", "--target", "azureml", "--dry-run", "--out", str(out),
            "--image-tag", "t", "--no-schedule"]
    result = CliRunner().invoke(main, args, env=AZURE_ENV)
    assert result.exit_code == 1 and "holds a secret" in result.output
    assert S not in result.output
    assert not out.exists() or all(S not in p.read_text() for p in out.rglob("*") if p.is_file())


def test_log_records_are_redacted() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    log = logging.getLogger("fleetscore.test_secrets")
    log.addHandler(handler)
    try:
        log.warning("cannot reach %s", SECRETS["tracking uri"][0])
        try:
            raise RuntimeError(SECRETS["account key"][0])
        except RuntimeError:
            log.exception("upload failed")
    finally:
        log.removeHandler(handler)
    assert S not in stream.getvalue() and "http://user:****@127.0.0.1:1" in stream.getvalue()


def test_run_records_are_redacted(tmp_path: Path) -> None:
    runs = RunLog(f"sqlite:///{tmp_path / 'f.db'}")
    runs.start("r1", datetime(2026, 1, 5), datetime(2026, 1, 6), "champion", datetime(2026, 1, 6),
               location=SECRETS["sas token"][0])
    runs.update("r1", status="failed", error=f"cannot write to {SECRETS['account key'][0]}")
    record = runs.get("r1")
    assert record is not None and S not in str(record)
    assert record["location"] == SECRETS["sas token"][1]


def test_mlflow_params_and_tags_are_redacted(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from fleetscore.training.registry import log_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = log_run(uri, "fleetscore-test", "r", {"database_url": SECRETS["url password"][0]}, {"rows": 1.0},
                     {"storage": SECRETS["sas token"][0]})
    run = MlflowClient(uri).get_run(run_id)
    assert run.data.params["database_url"] == SECRETS["url password"][1]
    assert run.data.tags["storage"] == SECRETS["sas token"][1]
