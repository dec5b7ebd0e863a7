"""The demo user and its paper account, created on first start in development so that a
fresh checkout has someone to log in as. Credentials live in the data directory (0600)."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from trading_backend.domain import DomainError
from trading_backend.runtime import Runtime

DEMO_FILE = "demo-credentials.json"
DEMO_USERNAME = "demo"
DEMO_CONFIG_ID = "demo-paper"


def demo_file(data_dir: Path) -> Path:
    return data_dir / DEMO_FILE


def read_demo_credentials(data_dir: Path) -> dict[str, Any] | None:
    path = demo_file(data_dir)
    if not path.exists():
        return None
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


async def ensure_demo_user(runtime: Runtime) -> dict[str, Any]:
    """Create the demo user (an ADMIN when it is the first user) and a paper config."""
    data_dir = runtime.settings.data_dir
    stored = read_demo_credentials(data_dir)
    user = await runtime.accounts.resolve_user(DEMO_USERNAME)
    if user is None:
        password = secrets.token_urlsafe(12)
        user = await runtime.accounts.create_user(DEMO_USERNAME, password)
        stored = {"username": DEMO_USERNAME, "password": password}
    elif stored is None:
        stored = {"username": DEMO_USERNAME, "password": "(set before this data directory's file)"}
    configs = await runtime.accounts.list_configs(user.id)
    if not any(c["config_id"] == DEMO_CONFIG_ID for c in configs):
        try:
            await runtime.accounts.create_config(
                user.id, "paper", "Demo paper account", config_id=DEMO_CONFIG_ID
            )
        except DomainError:
            pass  # taken by another user in this database: the demo user goes without
    stored.update({"user_id": user.id, "role": user.role, "config_id": DEMO_CONFIG_ID})
    path = demo_file(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(stored, handle, indent=2)
    return stored
