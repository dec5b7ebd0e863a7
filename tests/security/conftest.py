"""Security tests reuse the API fixtures (client, alice, bob) and get ``make_client``:
a client on a runtime built with chosen settings."""

from pathlib import Path

import pytest

from tests.api.conftest import alice, bob, client  # noqa: F401
from tests.security.support import ClientFactory, client_factory


@pytest.fixture
def make_client(tmp_path: Path, database_url: str) -> ClientFactory:
    return client_factory(tmp_path, database_url)
