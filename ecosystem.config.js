// PM2 process file for trading-backend on one machine, matching the seed: the trading API
// (2 instances), the trading engine (order workers, 4 instances) and the strategy monitor
// (the strategy runner, exactly 1); plus market-data (the live market feed, 1), which runs
// only with a live MARKET_DATA_SOURCE (in paper mode it exits with code 2 and PM2 leaves it
// stopped). docs/deployment.md explains it; in short:
//
//   python3.11 -m venv .venv && .venv/bin/pip install .   # the package, without dev extras
//   .venv/bin/trading-backend db upgrade     # migrate once, before the processes start
//   pm2 start ecosystem.config.js --env production
//   pm2 save && pm2 startup systemd
//
// Secrets are not here: every process runs in this directory and reads .env (mode 0600)
// itself, so MASTER_ENCRYPTION_KEY, JWT_SECRET_KEY, DATABASE_URL and REDIS_URL (which carry
// passwords) go there. What PM2 sets below overrides .env, so only non-secret settings are
// set here.
//
// Why not PM2's cluster mode: it shares one listening socket between Node.js workers and
// works for Node.js only. Each API instance here is a separate Python process (fork mode)
// on its own port: `increment_var: "PORT"` gives instance 0 API_BASE_PORT, instance 1
// API_BASE_PORT + 1, and so on, and a load balancer (nginx upstream, HAProxy) in front
// spreads requests over them.
//
// The roles without an API serve Prometheus metrics (plain HTTP, no authentication) on
// METRICS_HOST, each instance on its own port: trading-engine METRICS_BASE_PORT + 0, 1, ...
// (increment_var), strategy-monitor METRICS_BASE_PORT + 100, market-data
// METRICS_BASE_PORT + 200, + 201, ...; with the defaults 9100-9103, 9200 and 9300.
//
// Counts and paths can be changed without editing this file:
//   API_INSTANCES (2), WORKER_INSTANCES (4), MARKETDATA_INSTANCES (1), API_BASE_PORT (8000),
//   API_HOST (127.0.0.1), METRICS_BASE_PORT (9100), METRICS_HOST (127.0.0.1),
//   TRADING_BACKEND_BIN (.venv/bin/trading-backend), TRADING_BACKEND_LOG_DIR (./logs).

"use strict";

const fs = require("fs");
const path = require("path");

function count(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 1) {
    throw new Error(`${name} must be a whole number of at least 1, not ${JSON.stringify(raw)}`);
  }
  return value;
}

const ROOT = __dirname;
const BIN = process.env.TRADING_BACKEND_BIN || path.join(ROOT, ".venv", "bin", "trading-backend");
const LOG_DIR = process.env.TRADING_BACKEND_LOG_DIR || path.join(ROOT, "logs");
const API_INSTANCES = count("API_INSTANCES", 2);
const WORKER_INSTANCES = count("WORKER_INSTANCES", 4);
const MARKETDATA_INSTANCES = count("MARKETDATA_INSTANCES", 1);
const API_BASE_PORT = count("API_BASE_PORT", 8000);
const API_HOST = process.env.API_HOST || "127.0.0.1";
const METRICS_BASE_PORT = count("METRICS_BASE_PORT", 9100);
const METRICS_HOST = process.env.METRICS_HOST || "127.0.0.1";
if (METRICS_BASE_PORT + 200 + MARKETDATA_INSTANCES - 1 > 65535) {
  throw new Error(`METRICS_BASE_PORT ${METRICS_BASE_PORT} leaves no room for the metrics ports`);
}
if (WORKER_INSTANCES > 100) {
  throw new Error("WORKER_INSTANCES above 100 would reuse the strategy monitor's metrics port");
}

// A role's metrics endpoint: the first instance's port (increment_var gives the next ones).
function metrics(offset) {
  return { METRICS_HOST, METRICS_PORT: METRICS_BASE_PORT + offset };
}

// Create the log directory up front so that a first start never trips over its absence.
fs.mkdirSync(LOG_DIR, { recursive: true });

// The process roles are the `trading-backend` command's sub-commands, so the script is the
// console script of the virtualenv, run directly (no interpreter), with the role as args.
const common = {
  script: BIN,
  interpreter: "none",
  exec_mode: "fork",
  cwd: ROOT,
  autorestart: true,
  // A crashing process is restarted after 100 ms, then PM2 grows the delay (x1.5 each
  // time, up to 15 s) and resets it once the process has stayed up for 30 s: a database
  // or Redis outage does not turn into a tight restart loop.
  exp_backoff_restart_delay: 100,
  // A restart within min_uptime of the start counts as unstable; after max_restarts of
  // those in a row PM2 gives up and marks the app "errored" (about five minutes of
  // back-off with these values): alert on it.
  min_uptime: "30s",
  max_restarts: 30,
  // PM2 stops a process with SIGINT, which every role handles by shutting down cleanly,
  // then SIGKILL after kill_timeout: room for in-flight broker calls and for the strategy
  // runner's 30 s to save state.
  kill_timeout: 60000,
  // One file per app for all its instances, each line as the process wrote it (the JSON
  // logs of LOG_JSON=true carry their own timestamps). Rotate with pm2-logrotate.
  merge_logs: true,
};

function logs(name) {
  return {
    out_file: path.join(LOG_DIR, `${name}.out.log`),
    error_file: path.join(LOG_DIR, `${name}.err.log`),
  };
}

// Roles are split in every environment: only the trading-engine apps carry out orders and
// only the strategy-monitor hosts strategies.
const roles = { EMBEDDED_WORKER: "false", EMBEDDED_STRATEGIES: "false" };
const development = { ENVIRONMENT: "development", LOG_JSON: "false", ...roles };
const production = { ENVIRONMENT: "production", LOG_JSON: "true", ...roles };

module.exports = {
  apps: [
    {
      ...common,
      ...logs("trading-api"),
      name: "trading-api",
      args: ["serve"],
      instances: API_INSTANCES,
      increment_var: "PORT",
      env: { ...development, HOST: API_HOST, PORT: API_BASE_PORT },
      env_production: { ...production, HOST: API_HOST, PORT: API_BASE_PORT },
    },
    {
      ...common,
      ...logs("trading-engine"),
      name: "trading-engine",
      args: ["worker"],
      instances: WORKER_INSTANCES,
      increment_var: "METRICS_PORT",
      env: { ...development, ...metrics(0) },
      env_production: { ...production, ...metrics(0) },
    },
    {
      ...common,
      ...logs("strategy-monitor"),
      name: "strategy-monitor",
      args: ["strategies", "run"],
      instances: 1,
      env: { ...development, ...metrics(100) },
      env_production: { ...production, ...metrics(100) },
    },
    {
      // The live market feed for every process (a Redis lease: one instance holds it, any
      // others stand by). Set EMBEDDED_MARKET_FEED=false in .env with it, so the other
      // roles leave the feed to it. Exit code 2 means "nothing to do here" (paper mode,
      // no MARKET_DATA_CONFIG_ID, no Redis) or a configuration error (e.g. a metrics port
      // in use): restarting would not help, so PM2 leaves it stopped.
      ...common,
      ...logs("market-data"),
      name: "market-data",
      args: ["marketdata", "run"],
      instances: MARKETDATA_INSTANCES,
      increment_var: "METRICS_PORT",
      stop_exit_codes: [2],
      env: { ...development, ...metrics(200) },
      env_production: { ...production, ...metrics(200) },
    },
  ],
};
