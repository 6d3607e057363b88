#!/usr/bin/env bash
# Sitekeep's single test command (`npm test`): installs what the tests need, then runs
# typecheck, lint, unit tests (src/**/*.test.ts) and integration tests (test/**/*.test.ts).
# Idempotent: each setup step only acts when something is missing or stale.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'test.sh: %s\n' "$*"; }

# System packages the tests need, as "debian-package:command-that-proves-it-is-there".
APT_PACKAGES=(
  "restic:restic"   # interoperability tests against the reference implementation
  "attr:setfattr"   # setfattr/getfattr for extended-attribute fixtures
  "sqlite3:sqlite3" # database dump tests
  "python3:python3" # node-gyp
  "make:make"       # node-gyp
  "g++:g++"         # node-gyp (compiles the native addon)
  # PostgreSQL 15 server + client (test/helpers/dbservers.ts runs throwaway instances). No command is
  # named: initdb/pg_ctl live in /usr/lib/postgresql/N/bin, and /usr/bin/pg_dump and /usr/bin/pgbench
  # are postgresql-client-common's pg_wrapper (present without a server), so the package is checked.
  "postgresql:"         # pg_dump, psql, initdb, pg_ctl, postgres (postgresql-15 + postgresql-client-15)
  "postgresql-contrib:" # pgbench (a metapackage for postgresql-15, which ships pgbench on Debian 12)
  "mariadb-server:mariadbd"     # throwaway MariaDB instances (mariadbd, mariadb-install-db)
  "mariadb-client:mariadb-dump" # mariadb, mariadb-dump, mariadb-admin
  "chromium:chromium"           # the web console's end-to-end tests (playwright-core drives it)
)

# ---- (a) system packages -----------------------------------------------------------
missing=()
for entry in "${APT_PACKAGES[@]}"; do
  pkg="${entry%%:*}"
  cmd="${entry#*:}"
  if [ -n "$cmd" ] && command -v "$cmd" >/dev/null 2>&1; then
    continue
  fi
  if command -v dpkg-query >/dev/null 2>&1 &&
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    continue
  fi
  missing+=("$pkg")
done

if [ "${#missing[@]}" -gt 0 ]; then
  for pkg in "${missing[@]}"; do say "installing $pkg (apt-get)..."; done
  if ! command -v apt-get >/dev/null 2>&1; then
    say "apt-get not available; please install: ${missing[*]}" >&2
    exit 1
  fi
  SUDO=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      SUDO=(sudo)
    else
      say "not root and no sudo; please install: ${missing[*]}" >&2
      exit 1
    fi
  fi
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  say "system packages present (${#APT_PACKAGES[@]} checked)"
fi

# ---- (b) node modules --------------------------------------------------------------
if [ ! -d node_modules ] || [ ! -e node_modules/.package-lock.json ] ||
  [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing node modules (npm ci)..."
  npm ci
else
  say "node modules up to date"
fi

# ---- (c) native addon --------------------------------------------------------------
addon=build/Release/sitekeep_fs.node
if [ ! -f binding.gyp ] || [ ! -d native ] || [ -z "$(ls -A native 2>/dev/null)" ]; then
  say "native addon sources not present yet; skipping addon build"
else
  stale=0
  if [ ! -f "$addon" ] || [ binding.gyp -nt "$addon" ]; then
    stale=1
  elif [ -n "$(find native -type f -newer "$addon" -print -quit)" ]; then
    stale=1
  fi
  if [ "$stale" -eq 1 ]; then
    say "building native addon (node-gyp rebuild)..."
    npx --no-install node-gyp rebuild
  else
    say "native addon up to date ($addon)"
  fi
fi

# ---- (d) checks and tests ----------------------------------------------------------
say "typechecking (npm run typecheck)..."
npm run --silent typecheck

say "linting (npm run lint)..."
npm run --silent lint

test_files() {
  [ -d "$1" ] || return 0
  find "$1" -type f -name '*.test.ts' -not -path '*/node_modules/*' -print0 | sort -z
}


run_phase() { # <label> <dir> <npm-script>
  local label="$1" dir="$2" script="$3"
  local files=()
  mapfile -d '' files < <(test_files "$dir")
  if [ "${#files[@]}" -eq 0 ]; then
    say "no $label tests ($dir/**/*.test.ts) yet; skipping"
    return 0
  fi
  say "running $label tests (npm run $script, ${#files[@]} files)..."
  npm run --silent "$script"
}

run_phase unit src test:unit
run_phase integration test test:integration

say "all passed"
