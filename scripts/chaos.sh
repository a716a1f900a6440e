#!/usr/bin/env bash
# The chaos run at full size: three `flowbot run` instances on one PostgreSQL
# database, the Qpien simulator with server errors and slow answers, webhooks
# spread at random (some twice), one instance killed with SIGKILL and
# restarted, another stopped with SIGTERM. Its last line is
# "answered X/X exactly once, in order, 0 x 429", or what went wrong.
#
# Usage: scripts/chaos.sh [--conversations N] [--concurrency N] [--seed N] [--bots N]
# The database: $FLOWBOT_TEST_POSTGRES_URL, else postgres://postgres@127.0.0.1:5432/postgres
# (a schema of its own is made in it and dropped at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q --bin flowbot --example chaos
exec target/release/examples/chaos --bin target/release/flowbot "$@"
