"""Options shared by the CLI commands that talk to a running server over its REST API
(``strategies``, ``risk``, ``portfolio``, the order commands): one definition, so every
command names them and reads their environment variables alike."""

from __future__ import annotations

from typing import Annotated

import typer

ApiUrl = Annotated[str, typer.Option("--api-url", envvar="TB_API_URL", help="server URL")]
Username = Annotated[str | None, typer.Option(envvar="TB_USERNAME", help="login name")]
Password = Annotated[str | None, typer.Option(envvar="TB_PASSWORD", help="password")]
Token = Annotated[
    str | None, typer.Option(envvar="TB_TOKEN", help="access token instead of a login")
]
DEFAULT_URL = "http://127.0.0.1:8000"
