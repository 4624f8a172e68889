"""Blob storage that does not answer: every call ends within ``[scoring] storage_timeout`` with one line
naming the storage, for fsspec (adlfs) and for the Delta table (delta-rs) alike, and never passes for
"the container exists". Real loopback sockets: a refused port, and a server that takes the connection and
never answers."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from deltalake import DeltaTable

from fleetscore.errors import StorageError
from fleetscore.scoring import table
from fleetscore.scoring.storage import storage_spec

# Azurite's well-known development account (public, documented by Microsoft)
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def _connection_string(port: int) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")


@pytest.fixture()
def refused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture()
def silent_port() -> Iterator[int]:
    """A port whose connections the kernel completes (backlog) and nobody ever answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield int(server.getsockname()[1])


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_each_storage_call_ends_within_the_deadline_with_one_line(kind: str, refused_port: int,
                                                                   silent_port: int) -> None:
    port = refused_port if kind == "refused" else silent_port
    storage = storage_spec("az://fleet/predictions", connection_string=_connection_string(port), timeout_s=3).open()
    calls = {
        "cannot create storage root": storage.ensure_root,
        "write failed": lambda: storage.write_bytes("a/_manifest.json", b"{}"),
        "read failed": lambda: storage.read_bytes("a/_manifest.json"),
        "cannot check": lambda: storage.exists("a/_manifest.json"),
        "cannot list": lambda: storage.listdir("a"),
    }
    for what, call in calls.items():
        started = time.monotonic()
        with pytest.raises(StorageError) as info:
            call()
        took = time.monotonic() - started
        where = "az://fleet/predictions" + ("" if what == "cannot create storage root" else
                                            "/a" if what == "cannot list" else "/a/_manifest.json")
        assert str(info.value) == (f"{where}: {what}: the storage service did not answer within 3 s "
                                   "([scoring] storage_timeout)")
        assert took < 8, f"{what} took {took:.1f} s"


def test_the_delta_table_gets_the_same_deadline(silent_port: int) -> None:
    spec = storage_spec("az://fleet/predictions", connection_string=_connection_string(silent_port), timeout_s=3)
    uri, options = spec.table_location("predictions")
    assert uri == "az://fleet/predictions/predictions"
    assert {k: options[k] for k in ("timeout", "connect_timeout", "retry_timeout")} == {
        "timeout": "3s", "connect_timeout": "3s", "retry_timeout": "3s"}
    started = time.monotonic()
    with pytest.raises(OSError):
        DeltaTable(uri, storage_options=options)
    assert time.monotonic() - started < 20  # without these options: still waiting after 120 s
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        table.read_predictions(spec)
    assert time.monotonic() - started < 20
    assert str(info.value).startswith("az://fleet/predictions/predictions: cannot open the predictions table: "
                                      "OSError: Generic MicrosoftAzure error: GET failed after 3.")
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)
