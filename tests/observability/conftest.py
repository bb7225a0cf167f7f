"""Fixtures for the observability tests: the integration harness, and an OTLP receiver.

The Hivemind and Envoy fixtures (and the hook that attaches process logs to a failing
test's report) are the integration package's, imported so they apply here too.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from integration.conftest import (  # noqa: F401 - fixtures and a hook, used by name
    envoy_binary,
    hivemind_factory,
    module_hivemind_factory,
)
from observability.otlp_receiver import OtlpReceiver


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """A real OTLP/gRPC collector endpoint on 127.0.0.1 that keeps what it is sent."""
    with OtlpReceiver() as receiver:
        yield receiver
