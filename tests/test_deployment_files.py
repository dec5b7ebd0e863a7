"""The deployment files (Dockerfile, docker-compose.yml, ecosystem.config.js, the shell
commands of docs/deployment.md) are parsed and checked against the code they start.

A typo in a command, a variable no setting reads, a secret written inline or a health check
that probes the wrong thing would only show on a production machine; here they fail a test.
Docker itself is not needed: the Dockerfile and the Compose file are parsed, the PM2 file
is evaluated by node (as PM2 does), the image's health check command is run against a
local HTTP server, and `docker compose config` runs only where Docker Compose is present.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from trading_backend.cli import app as cli_app
from trading_backend.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
APP_SERVICES = {"migrate", "api", "worker", "strategies", "marketdata"}
LONG_RUNNING = {"api", "worker", "strategies", "marketdata"}
# The roles without an API: each serves Prometheus metrics on a port of its own (issue #7).
METRICS_SERVICES = {"worker", "strategies", "marketdata"}
# Names that carry secrets: they may only ever come from .env, never be written in a file.
SECRET_NAME = re.compile(r"(KEY|SECRET|PASSWORD|PASS|TOKEN|TOTP|CREDENTIAL)", re.IGNORECASE)
COMPOSE_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


# -- helpers ------------------------------------------------------------------------------
def resolve_cli(argv: list[str]) -> tuple[list[str], Any]:
    """The command ``trading-backend *argv`` runs (its name path and the command object),
    after checking that its options and arguments parse: an unknown command fails an
    assertion; unknown options, missing or extra arguments raise a usage error (exit
    code 2). Typer may bring its own copy of click, so only duck typing is used here."""
    command: Any = typer.main.get_command(cli_app)
    names: list[str] = []
    rest = list(argv)
    while isinstance(getattr(command, "commands", None), dict):  # a group
        assert rest, f"`trading-backend {' '.join(argv)}` names a group, not a command"
        name = rest.pop(0)
        sub = command.get_command(typer.Context(command), name)
        assert sub is not None, f"`trading-backend {' '.join(argv)}`: no command {name!r}"
        names.append(name)
        command = sub
    # Options that prompt when left out (passwords) read a line each from a stand-in stdin.
    with CliRunner().isolation(input="a-long-password\n" * 8):
        command.make_context(command.name or "", rest, resilient_parsing=False).close()
    return names, command


def usage_error(argv: list[str]) -> BaseException:
    """The error ``trading-backend *argv`` fails with while parsing."""
    try:
        resolve_cli(argv)
    except AssertionError as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - click's UsageError, from whichever click typer uses
        assert getattr(exc, "exit_code", None) == 2, repr(exc)
        return exc
    raise AssertionError(f"`trading-backend {' '.join(argv)}` parsed")


def assert_real_command(argv: list[str]) -> None:
    """``argv`` is a real ``trading-backend`` invocation: it parses, and its command's
    `--help` answers (exit code 0) through typer's CliRunner."""
    names, _ = resolve_cli(argv)
    result = CliRunner().invoke(cli_app, [*names, "--help"])
    assert result.exit_code == 0, result.output


def settings_env_names() -> set[str]:
    """The environment variables Settings reads (field names, or their aliases)."""
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names.add(str(alias).upper() if isinstance(alias, str) else name.upper())
    return names


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable substitution (${VAR}, ${VAR:-default}, ${VAR:?error}, $$)."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if env.get(name):
            return env[name]
        if op in (":-", "-"):
            return arg or ""
        if op in (":?", "?"):
            raise LookupError(f"{name}: {arg}")
        return ""

    return COMPOSE_VAR.sub(substitute, value.replace("$$", "\0")).replace("\0", "$")


def is_reference(value: str) -> bool:
    """The whole value is one ${VAR...} reference (filled in from .env at deploy time)."""
    match = COMPOSE_VAR.fullmatch(value)
    return match is not None


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:  # Docker skips both, even mid-instruction
            continue
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
            continue
        current += line
        keyword, _, rest = current.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return instructions


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The build stages, each starting with its FROM."""
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions:
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def healthcheck_argv(arguments: str) -> list[str]:
    options, marker, command = arguments.partition("CMD ")
    assert marker, "HEALTHCHECK without CMD"
    # A hung API must count as unhealthy, and a starting one not too early.
    assert "--timeout=" in options and "--start-period=" in options
    argv = json.loads(command)
    assert isinstance(argv, list), "HEALTHCHECK CMD should be in exec (JSON) form"
    return [str(a) for a in argv]


def evaluate_ecosystem(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    return subprocess.run(
        [node, "-e", 'console.log(JSON.stringify(require("./ecosystem.config.js")))'],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result = compose["services"]
    assert isinstance(result, dict)
    return result


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


@pytest.fixture
def ecosystem(tmp_path: Path) -> tuple[dict[str, Any], Path]:
    log_dir = tmp_path / "logs"
    result = evaluate_ecosystem({"TRADING_BACKEND_LOG_DIR": str(log_dir)})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), log_dir


@pytest.fixture
def health_server() -> Iterator[tuple[int, list[dict[str, str]], dict[str, int]]]:
    """A local HTTP server standing in for the API: answers with ``state["status"]`` and
    records each request's path and Host header."""
    seen: list[dict[str, str]] = []
    state = {"status": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append({"path": self.path, "host": self.headers.get("Host", "")})
            body = b'{"status": "healthy"}'
            self.send_response(state["status"])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen, state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# -- the CLI check itself -------------------------------------------------------------------
def test_the_command_check_rejects_what_the_cli_does_not_have() -> None:
    assert_real_command(["serve", "--host", "0.0.0.0"])
    assert_real_command(["strategies", "run"])
    assert resolve_cli(["db", "upgrade"])[0] == ["db", "upgrade"]
    assert "No such option" in str(usage_error(["serve", "--workers", "4"]))
    # -- mdrole (issue #7): `marketdata run` exists now; another name stands for a missing one
    assert_real_command(["marketdata", "run"])
    assert "no command 'marketfeed'" in str(usage_error(["marketfeed", "run"]))
    # -- end mdrole
    assert "no command 'go'" in str(usage_error(["strategies", "go"]))
    assert "unexpected extra argument" in str(usage_error(["worker", "extra-argument"]))
    assert "names a group" in str(usage_error(["strategies"]))


# -- docker-compose.yml ---------------------------------------------------------------------
def test_compose_has_the_production_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {"postgres", "redis", *APP_SERVICES}
    assert str(services["postgres"]["image"]).startswith("postgres:15")
    assert str(services["redis"]["image"]).startswith("redis:7")


def test_compose_commands_are_real_cli_commands(services: dict[str, dict[str, Any]]) -> None:
    expected = {
        "migrate": ["db", "upgrade"],
        "api": ["serve", "--host", "0.0.0.0"],
        "worker": ["worker"],
        "strategies": ["strategies", "run"],
        "marketdata": ["marketdata", "run"],
    }
    for name, argv in expected.items():
        assert services[name]["command"] == argv, name
        assert_real_command(argv)


def test_compose_marketdata_runs_only_with_its_profile(
    services: dict[str, dict[str, Any]],
) -> None:
    """In paper mode `marketdata run` exits at once (code 2) and `restart: unless-stopped`
    would loop it: it starts only with `--profile live-market`, as a holder and a standby;
    every other service starts without a profile."""
    marketdata = services["marketdata"]
    assert marketdata["profiles"] == ["live-market"]
    assert marketdata["deploy"]["replicas"] == 2
    assert all("profiles" not in services[name] for name in set(services) - {"marketdata"})


def test_compose_roles_without_an_api_serve_metrics_privately(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in METRICS_SERVICES:
        service = services[name]
        env = service["environment"]
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, interpolate(str(value), {"POSTGRES_PASSWORD": "pw"}))
            settings = Settings(_env_file=None)  # type: ignore[call-arg]
        # Reachable on the Compose network (the container's own address), never published.
        assert settings.metrics_port == 9100 and settings.metrics_host == "0.0.0.0", name
        assert "ports" not in service, name
        assert [str(p) for p in service["expose"]] == ["9100"], name
    # The API has GET /metrics behind an admin key instead; migrations serve nothing.
    for name in ("api", "migrate"):
        assert "METRICS_PORT" not in services[name]["environment"], name


def test_compose_app_environment(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    known = settings_env_names()
    for name in APP_SERVICES:
        service = services[name]
        env = service["environment"]
        assert env["ENVIRONMENT"] == "production"
        assert env["EMBEDDED_WORKER"] == "false" and env["EMBEDDED_STRATEGIES"] == "false"
        assert str(env["DATABASE_URL"]).startswith("postgresql://")
        assert str(env["REDIS_URL"]).startswith("redis://redis:6379/")
        # Every variable set is one the application reads (no misspelt setting).
        assert set(env) <= known, set(env) - known
        # Secrets come from the env file.
        env_files = service["env_file"]
        assert ".env" in ([env_files] if isinstance(env_files, str) else env_files)
        # The container's environment, as Compose fills it in, makes production settings.
        with monkeypatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, interpolate(str(value), {"POSTGRES_PASSWORD": "pw"}))
            settings = Settings(_env_file=None)  # type: ignore[call-arg]
        assert settings.is_production
        assert settings.embedded_worker is False and settings.embedded_strategies is False
        assert settings.effective_database_url.startswith("postgresql+asyncpg://")
        assert settings.redis_url == env["REDIS_URL"]
        assert settings.data_dir == Path("/var/lib/trading-backend")


def test_compose_database_url_takes_its_password_from_env() -> None:
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    url_template = raw["services"]["api"]["environment"]["DATABASE_URL"]
    password = "s3cretFromDotEnv"
    url = make_url(interpolate(url_template, {"POSTGRES_PASSWORD": password}))
    assert url.host == "postgres" and url.port == 5432
    assert url.password == password
    postgres_env = raw["services"]["postgres"]["environment"]
    assert url.database == interpolate(postgres_env["POSTGRES_DB"], {})
    assert url.username == interpolate(postgres_env["POSTGRES_USER"], {})
    # Without the password in .env Compose refuses to start rather than use an empty one.
    with pytest.raises(LookupError, match="POSTGRES_PASSWORD"):
        interpolate(url_template, {})
    with pytest.raises(LookupError, match="POSTGRES_PASSWORD"):
        interpolate(postgres_env["POSTGRES_PASSWORD"], {})


def test_compose_writes_no_secret_inline(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        for key, value in env.items():
            if SECRET_NAME.search(key):
                assert is_reference(str(value)), f"{name}: {key} must come from .env"
        assert "MASTER_ENCRYPTION_KEY" not in env and "JWT_SECRET_KEY" not in env
        if "DATABASE_URL" in env:
            password = make_url(interpolate(str(env["DATABASE_URL"]), {"POSTGRES_PASSWORD": "X"}))
            assert password.password == "X", "the database password must be ${POSTGRES_PASSWORD}"


def test_compose_health_checks_and_start_order(services: dict[str, dict[str, Any]]) -> None:
    postgres_check = " ".join(services["postgres"]["healthcheck"]["test"])
    assert "pg_isready" in postgres_check
    assert "redis-cli ping" in " ".join(services["redis"]["healthcheck"]["test"])
    for name in APP_SERVICES - {"migrate"}:
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    # The API keeps the image's /health check; the roles without an HTTP server drop it.
    assert "healthcheck" not in services["api"]
    for name in ("worker", "strategies", "marketdata", "migrate"):
        assert services[name]["healthcheck"] == {"disable": True}, name


def test_compose_scaling_restarts_and_shutdown(services: dict[str, dict[str, Any]]) -> None:
    assert services["api"]["deploy"]["replicas"] == 2
    assert services["worker"]["deploy"]["replicas"] == 3
    assert services["strategies"]["deploy"]["replicas"] == 1
    assert services["marketdata"]["deploy"]["replicas"] == 2  # a holder and a hot standby
    # Each API replica publishes container port 8000 on one port of a host range.
    (mapping,) = services["api"]["ports"]
    host, _, container = interpolate(mapping, {}).rpartition(":")
    low, _, high = host.partition("-")
    assert container == "8000" and int(high) - int(low) + 1 >= 2
    assert services["migrate"]["restart"] == "no"
    for name in LONG_RUNNING | {"postgres", "redis"}:
        assert services[name]["restart"] in ("always", "unless-stopped"), name
    for name in LONG_RUNNING:
        service = services[name]
        # SIGINT is the signal every role shuts down cleanly on (see docs/deployment.md).
        assert service["stop_signal"] == "SIGINT", name
        grace = re.fullmatch(r"(\d+)s", service["stop_grace_period"])
        assert grace and int(grace[1]) >= 30, name


def test_compose_volumes_keep_postgres_and_redis_data(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(compose["volumes"])
    mounts = {
        name: {str(v).split(":", 1)[0]: str(v).split(":", 1)[1] for v in services[name]["volumes"]}
        for name in ("postgres", "redis")
    }
    assert "/var/lib/postgresql/data" in mounts["postgres"].values()
    assert "/data" in mounts["redis"].values()
    assert set(mounts["postgres"]) | set(mounts["redis"]) <= declared
    assert "--appendonly" in services["redis"]["command"]
    # Neither is published on the host.
    assert "ports" not in services["postgres"] and "ports" not in services["redis"]


def test_docker_compose_config_is_valid(tmp_path: Path) -> None:
    """Docker Compose's own validation, where Docker Compose is installed."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker is not installed")
    probe = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, check=False, timeout=60
    )
    if probe.returncode != 0:
        pytest.skip("docker compose is not available")
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    (tmp_path / ".env").write_text("POSTGRES_PASSWORD=check\n")
    result = subprocess.run(
        [docker, "compose", "config", "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


# -- Dockerfile -------------------------------------------------------------------------------
def test_dockerfile_is_multi_stage_on_python_311_slim(
    dockerfile: list[tuple[str, str]],
) -> None:
    args = dict(
        arg.split("=", 1)
        for keyword, arg in dockerfile[: [k for k, _ in dockerfile].index("FROM")]
        if keyword == "ARG"
    )
    built = stages(dockerfile)
    assert len(built) >= 2
    for stage in built:
        image = stage[0][1].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], image)
        assert image == "python:3.11-slim", image
    build, runtime = built[0], built[-1]
    assert any(k == "RUN" and "pip wheel" in a for k, a in build)
    install = [a for k, a in runtime if k == "RUN" and "pip install" in a]
    assert install and all("--no-index" in a for a in install)
    # The package, not the dev extras.
    assert not any("[dev]" in a for _, a in dockerfile)


def test_dockerfile_runs_as_non_root(dockerfile: list[tuple[str, str]]) -> None:
    runtime = stages(dockerfile)[-1]
    users = [a for k, a in runtime if k == "USER"]
    assert users, "the runtime stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    # USER comes after the last RUN, so nothing later runs as root either.
    keywords = [k for k, _ in runtime]
    assert max(i for i, k in enumerate(keywords) if k == "RUN") < keywords.index("USER")


def test_dockerfile_entrypoint_and_command(dockerfile: list[tuple[str, str]]) -> None:
    runtime = dict(stages(dockerfile)[-1][1:])
    assert json.loads(runtime["ENTRYPOINT"]) == ["trading-backend"]
    cmd = json.loads(runtime["CMD"])
    assert cmd == ["serve", "--host", "0.0.0.0"]
    assert_real_command(cmd)
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "trading-backend" in scripts


def test_dockerfile_bakes_in_no_secret(dockerfile: list[tuple[str, str]]) -> None:
    for keyword, arguments in dockerfile:
        if keyword in ("ENV", "ARG", "LABEL"):
            names = re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", arguments) or [
                arguments.split()[0]
            ]
            for name in names:
                assert not SECRET_NAME.search(name), f"{keyword} {name}"
                assert name not in ("DATABASE_URL", "REDIS_URL"), f"{keyword} {name}"
        if keyword in ("COPY", "ADD"):
            assert ".env" not in arguments.split() and "data" not in arguments.split()
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".env", ".venv", "data", ".git", ".pytest_cache", ".mypy_cache", "tests"):
        assert entry in ignored, entry


def test_dockerfile_health_check_probes_health(
    dockerfile: list[tuple[str, str]],
    health_server: tuple[int, list[dict[str, str]], dict[str, int]],
) -> None:
    """The image's HEALTHCHECK, run as it is: exit 0 on 200 from /health, not 0 on 503."""
    (check,) = [a for k, a in stages(dockerfile)[-1] if k == "HEALTHCHECK"]
    argv = healthcheck_argv(check)
    assert argv[0] == "python"  # slim images have no curl
    port, seen, state = health_server
    run_env = {**os.environ, "PORT": str(port)}
    command = [sys.executable, *argv[1:]]
    ok = subprocess.run(command, env=run_env, capture_output=True, timeout=30, check=False)
    assert ok.returncode == 0, ok.stderr
    assert seen[-1] == {"path": "/health", "host": "localhost"}
    state["status"] = 503
    down = subprocess.run(command, env=run_env, capture_output=True, timeout=30, check=False)
    assert down.returncode != 0
    assert len(seen) == 2


# -- ecosystem.config.js (PM2) ----------------------------------------------------------------
def test_ecosystem_apps_match_the_seed(ecosystem: tuple[dict[str, Any], Path]) -> None:
    config, _ = ecosystem
    apps = {app["name"]: app for app in config["apps"]}
    assert set(apps) == {"trading-api", "trading-engine", "strategy-monitor", "market-data"}
    assert apps["trading-api"]["instances"] == 2
    assert apps["trading-engine"]["instances"] == 4
    assert apps["strategy-monitor"]["instances"] == 1
    assert apps["market-data"]["instances"] == 1
    expected_args = {
        "trading-api": ["serve"],
        "trading-engine": ["worker"],
        "strategy-monitor": ["strategies", "run"],
        "market-data": ["marketdata", "run"],
    }
    for name, app in apps.items():
        assert app["args"] == expected_args[name]
        assert_real_command(app["args"])
        assert Path(app["script"]) == ROOT / ".venv" / "bin" / "trading-backend"
        assert app["interpreter"] == "none" and app["exec_mode"] == "fork"
        assert Path(app["cwd"]) == ROOT  # where .env is read from


def test_ecosystem_api_instances_get_their_own_ports(
    ecosystem: tuple[dict[str, Any], Path],
) -> None:
    config, _ = ecosystem
    (api,) = [app for app in config["apps"] if app["name"] == "trading-api"]
    assert api["increment_var"] == "PORT"
    for env_name in ("env", "env_production"):
        assert api[env_name]["PORT"] == 8000
        assert api[env_name]["HOST"] == "127.0.0.1"


def test_ecosystem_metrics_ports_are_distinct_and_private(
    ecosystem: tuple[dict[str, Any], Path],
) -> None:
    """Each instance of a role without an API gets its own metrics port (PM2's
    increment_var for the roles with several instances), on 127.0.0.1 by default."""
    config, _ = ecosystem
    apps = {app["name"]: app for app in config["apps"]}
    assert "METRICS_PORT" not in apps["trading-api"]["env_production"]
    ports: list[int] = []
    for name in ("trading-engine", "strategy-monitor", "market-data"):
        app = apps[name]
        for env_name in ("env", "env_production"):
            assert app[env_name]["METRICS_HOST"] == "127.0.0.1", name
        first = app["env_production"]["METRICS_PORT"]
        assert app["env"]["METRICS_PORT"] == first, name
        ports.extend(range(first, first + app["instances"]))
    for name in ("trading-engine", "market-data"):  # several instances: one port each
        assert apps[name]["increment_var"] == "METRICS_PORT", name
    assert ports == [9100, 9101, 9102, 9103, 9200, 9300]
    assert len(set(ports)) == len(ports)


def test_ecosystem_market_data_stays_stopped_when_it_has_nothing_to_do(
    ecosystem: tuple[dict[str, Any], Path],
) -> None:
    """Exit code 2 (paper mode, a configuration error) is final: no restart loop."""
    from trading_backend.marketdata_cli import EXIT_NOT_APPLICABLE

    config, _ = ecosystem
    (app,) = [app for app in config["apps"] if app["name"] == "market-data"]
    assert app["stop_exit_codes"] == [EXIT_NOT_APPLICABLE]
    assert app["autorestart"] is True  # a crash is still restarted


def test_ecosystem_restarts_shutdown_and_logs(ecosystem: tuple[dict[str, Any], Path]) -> None:
    config, log_dir = ecosystem
    assert log_dir.is_dir()
    for app in config["apps"]:
        assert app["autorestart"] is True
        assert app["exp_backoff_restart_delay"] > 0
        assert app["max_restarts"] > 0 and app["min_uptime"]
        assert app["kill_timeout"] >= 30_000  # ms between SIGINT and SIGKILL
        assert app["merge_logs"] is True
        for key in ("out_file", "error_file"):
            path = Path(app[key])
            assert path.parent == log_dir and path.name.startswith(app["name"])


def test_ecosystem_environments(ecosystem: tuple[dict[str, Any], Path]) -> None:
    config, _ = ecosystem
    known = settings_env_names()
    for app in config["apps"]:
        production = app["env_production"]
        assert production["ENVIRONMENT"] == "production"
        assert app["env"]["ENVIRONMENT"] == "development"
        for env in (app["env"], production):
            assert env["EMBEDDED_WORKER"] == "false" and env["EMBEDDED_STRATEGIES"] == "false"
            assert set(env) <= known, set(env) - known
            # Secrets and URLs with passwords come from .env, which PM2 must not override.
            for key in env:
                assert not SECRET_NAME.search(key), key
            assert "DATABASE_URL" not in env and "REDIS_URL" not in env


def test_ecosystem_counts_and_ports_are_configurable(tmp_path: Path) -> None:
    result = evaluate_ecosystem(
        {
            "TRADING_BACKEND_LOG_DIR": str(tmp_path),
            "API_INSTANCES": "3",
            "WORKER_INSTANCES": "6",
            "API_BASE_PORT": "9100",
            "MARKETDATA_INSTANCES": "2",
            "METRICS_BASE_PORT": "19100",
            "METRICS_HOST": "0.0.0.0",
        }
    )
    assert result.returncode == 0, result.stderr
    apps = {app["name"]: app for app in json.loads(result.stdout)["apps"]}
    assert apps["trading-api"]["instances"] == 3
    assert apps["trading-api"]["env_production"]["PORT"] == 9100
    assert apps["trading-engine"]["instances"] == 6
    assert apps["trading-engine"]["env_production"]["METRICS_PORT"] == 19100
    assert apps["strategy-monitor"]["env_production"]["METRICS_PORT"] == 19200
    assert apps["market-data"]["instances"] == 2
    assert apps["market-data"]["env_production"]["METRICS_PORT"] == 19300
    assert apps["market-data"]["env_production"]["METRICS_HOST"] == "0.0.0.0"
    bad = evaluate_ecosystem({"TRADING_BACKEND_LOG_DIR": str(tmp_path), "API_INSTANCES": "0"})
    assert bad.returncode != 0
    assert "API_INSTANCES must be a whole number of at least 1" in bad.stderr


# -- docs/deployment.md ---------------------------------------------------------------------
def test_deployment_doc_commands_exist() -> None:
    """Every `trading-backend ...` line in the guide's shell blocks is a real command,
    also where it runs in the image (`docker run ... trading-backend:TAG ...`) or in a
    Compose service (`docker compose run --rm SERVICE ...`)."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    blocks = re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, re.DOTALL)
    commands = []
    for block in blocks:
        for line in block.splitlines():
            # The command itself: up to a comment, pipe, redirection or next command.
            line = re.split(r"\s(?:#|\||>>?|&&|;)", line, maxsplit=1)[0].strip()
            match = (
                re.match(r"^(?:\S*/)?trading-backend\s+(.*)$", line)
                or re.match(r"^docker run\s.*?\btrading-backend:\S+\s+(.*)$", line)
                or re.match(r"^docker compose run(?:\s+-\S+)*\s+[\w-]+\s+(.*)$", line)
            )
            if match:
                commands.append(shlex.split(match[1]))
    assert len(commands) >= 4
    for argv in commands:
        assert_real_command(argv)
