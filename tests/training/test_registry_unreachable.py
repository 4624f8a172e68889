"""An unreachable MLflow server is reported as unreachable, within seconds, never as a missing alias
(issue 15); its password is never printed."""

from __future__ import annotations

import time

import pytest

from fleetscore.errors import ReleaseNotFound, ServiceUnavailable


@pytest.mark.timeout(120)
@pytest.mark.parametrize("ref", ["champion", "3"])
def test_an_unreachable_server_is_unavailable_not_missing(ref: str) -> None:
    from fleetscore.training.registry import resolve_release

    t0 = time.monotonic()
    with pytest.raises(ServiceUnavailable) as caught:
        resolve_release("http://user:S3cr3tValue@127.0.0.1:1", "fleetscore-anomaly", ref)
    assert time.monotonic() - t0 < 30
    assert not isinstance(caught.value, ReleaseNotFound)
    message = str(caught.value)
    assert message.startswith("MLflow at http://user:****@127.0.0.1:1 did not answer: ")
    assert "S3cr3tValue" not in message and "\n" not in message
