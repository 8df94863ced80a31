# Throwaway PostgreSQL for tests: sourced by scripts/test (and usable by hand:
#   . scripts/lib/postgres.sh && pg_start && echo "$AUTHSTORE_TEST_POSTGRES_URL"; ...; pg_stop).
#
# pg_start finds the server binaries (PATH, then /usr/lib/postgresql/*/bin), installs the
# Debian `postgresql` package with apt-get when they are missing and we are root, runs initdb
# into a temporary directory (as the `postgres` user when we are root: initdb refuses root),
# starts the server on a free port on 127.0.0.1 with a private socket directory, and exports:
#   AUTHSTORE_TEST_POSTGRES_URL   postgres://authstore@127.0.0.1:PORT/postgres (trust auth)
#   AUTHSTORE_TEST_POSTGRES_CTL   a script taking `stop` | `start` | `restart` (fault tests)
# pg_stop stops it and removes the directory.

pg__find_bin() {
  local d
  for d in "$(dirname "$(command -v pg_ctl 2>/dev/null || echo /nonexistent/x)")" \
           $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then
      echo "$d"
      return 0
    fi
  done
  return 1
}

pg__free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
  else
    local p
    for p in $(seq 20000 20999 | shuf); do
      (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return 0; }
    done
    return 1
  fi
}

pg_start() {
  local bin
  if ! bin=$(pg__find_bin); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "PostgreSQL not found: installing the Debian postgresql package" >&2
      apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null \
        || { echo "apt-get install postgresql failed" >&2; return 1; }
      bin=$(pg__find_bin) || { echo "postgresql installed but its binaries were not found" >&2; return 1; }
    else
      echo "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: install PostgreSQL (e.g. apt-get install postgresql) or put its bin directory on PATH" >&2
      return 1
    fi
  fi
  PG_DIR=$(mktemp -d /tmp/authstore-pg.XXXXXX)
  local run=""
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin postgres
    chown postgres "$PG_DIR"
    run="runuser -u postgres --"
  fi
  $run "$bin/initdb" -D "$PG_DIR/data" -U authstore --auth=trust -E UTF8 --no-locale >"$PG_DIR/initdb.log" 2>&1 \
    || { cat "$PG_DIR/initdb.log" >&2; return 1; }
  $run mkdir "$PG_DIR/sock"
  PG_PORT=$(pg__free_port) || { echo "no free port found" >&2; return 1; }
  # Throwaway data: durability settings off for speed. Benchmarks run their own server with
  # the real settings.
  $run tee -a "$PG_DIR/data/postgresql.conf" >/dev/null <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_DIR/sock'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
CONF
  cat >"$PG_DIR/ctl" <<CTL
#!/bin/sh
exec $run "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 -m fast "\$@"
CTL
  chmod 755 "$PG_DIR/ctl"
  "$PG_DIR/ctl" start >/dev/null || { cat "$PG_DIR/server.log" >&2; return 1; }
  export AUTHSTORE_TEST_POSTGRES_URL="postgres://authstore@127.0.0.1:$PG_PORT/postgres"
  export AUTHSTORE_TEST_POSTGRES_CTL="$PG_DIR/ctl"
  echo "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT (data in $PG_DIR)" >&2
}

pg_stop() {
  [ -n "${PG_DIR:-}" ] || return 0
  "$PG_DIR/ctl" stop >/dev/null 2>&1 || true
  rm -rf "$PG_DIR"
  PG_DIR=""
}
