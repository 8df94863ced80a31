# Throwaway PostgreSQL for tests: sourced by scripts/test (and usable by hand:
#   . scripts/lib/postgres.sh && pg_start && echo "$AUTHSTORE_TEST_POSTGRES_URL"; ...; pg_stop).
#
# pg_start finds the server binaries (PATH, then /usr/lib/postgresql/*/bin), installs the
# Debian `postgresql` package with apt-get when they are missing and we are root, runs initdb
# into a temporary directory (as the `postgres` user when we are root: initdb refuses root),
# makes a throwaway CA and a server certificate signed by it (openssl; the Debian `openssl`
# package is installed the same way when missing), starts the server with TLS on (plain
# connections are still accepted) on a free port on 127.0.0.1 with a private socket
# directory, and exports:
#   AUTHSTORE_TEST_POSTGRES_URL   postgres://authstore@127.0.0.1:PORT/postgres (trust auth)
#   AUTHSTORE_TEST_POSTGRES_CA    the CA's PEM, for sslmode=verify-full&sslrootcert=… (the
#                                 server certificate is valid for 127.0.0.1 and localhost)
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

# Installs a Debian package with apt-get when we are root (the caller checked it is missing).
pg__apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "$1 not found: installing the Debian $1 package" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null \
      || { echo "apt-get install $1 failed" >&2; return 1; }
  else
    return 1
  fi
}

# Writes into directory $1 a throwaway CA (ca.pem; its key is deleted once used) and a
# server certificate signed by it (server.pem, server.key) for IP 127.0.0.1 and DNS
# localhost, valid for 30 days. EC P-256 keys; explicit extensions, so the result does not
# depend on the system's openssl.cnf, and rustls/webpki accept it (CA:TRUE on the CA,
# CA:FALSE, serverAuth and subjectAltName on the server certificate).
pg__make_certs() {
  local dir=$1
  cat >"$dir/x509.cnf" <<'CNF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF
  {
    openssl req -x509 -new -config "$dir/x509.cnf" -extensions ca_ext -days 30 \
      -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/ca.key" \
      -subj "/CN=authstore throwaway test CA" -out "$dir/ca.pem" &&
    openssl req -new -config "$dir/x509.cnf" \
      -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/server.key" \
      -subj "/CN=localhost" -out "$dir/server.csr" &&
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
      -set_serial "0x$(openssl rand -hex 16)" -days 30 \
      -extfile "$dir/x509.cnf" -extensions server_ext -out "$dir/server.pem"
  } >"$dir/openssl.log" 2>&1 || { cat "$dir/openssl.log" >&2; return 1; }
  rm -f "$dir/ca.key" "$dir/server.csr" "$dir/openssl.log"
  chmod 644 "$dir/ca.pem" "$dir/server.pem"
  chmod 600 "$dir/server.key"
}

pg_start() {
  local bin
  if ! bin=$(pg__find_bin); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      pg__apt_install postgresql || return 1
      bin=$(pg__find_bin) || { echo "postgresql installed but its binaries were not found" >&2; return 1; }
    else
      echo "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: install PostgreSQL (e.g. apt-get install postgresql) or put its bin directory on PATH" >&2
      return 1
    fi
  fi
  if ! command -v openssl >/dev/null 2>&1; then
    pg__apt_install openssl || {
      echo "openssl not found (needed for the test server's TLS certificates): install it (e.g. apt-get install openssl)" >&2
      return 1
    }
  fi
  PG_DIR=$(mktemp -d /tmp/authstore-pg.XXXXXX)
  local run=""
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin postgres
    chown postgres "$PG_DIR"
    run="runuser -u postgres --"
  fi
  # Others may pass through (not list) the directory, to read the CA certificate; the data
  # directory keeps its own 0700.
  chmod 711 "$PG_DIR"
  $run "$bin/initdb" -D "$PG_DIR/data" -U authstore --auth=trust -E UTF8 --no-locale >"$PG_DIR/initdb.log" 2>&1 \
    || { cat "$PG_DIR/initdb.log" >&2; return 1; }
  # TLS: generated by us, then the key handed to the server's user (PostgreSQL refuses a key
  # that is not its own with mode 0600).
  mkdir -m 755 "$PG_DIR/tls"
  pg__make_certs "$PG_DIR/tls" || { echo "could not make the test TLS certificates" >&2; return 1; }
  [ -z "$run" ] || chown postgres "$PG_DIR/tls/server.key"
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
ssl = on
ssl_cert_file = '$PG_DIR/tls/server.pem'
ssl_key_file = '$PG_DIR/tls/server.key'
CONF
  cat >"$PG_DIR/ctl" <<CTL
#!/bin/sh
exec $run "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 -m fast "\$@"
CTL
  chmod 755 "$PG_DIR/ctl"
  "$PG_DIR/ctl" start >/dev/null || { cat "$PG_DIR/server.log" >&2; return 1; }
  export AUTHSTORE_TEST_POSTGRES_URL="postgres://authstore@127.0.0.1:$PG_PORT/postgres"
  export AUTHSTORE_TEST_POSTGRES_CA="$PG_DIR/tls/ca.pem"
  export AUTHSTORE_TEST_POSTGRES_CTL="$PG_DIR/ctl"
  echo "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT (data in $PG_DIR)" >&2
}

pg_stop() {
  [ -n "${PG_DIR:-}" ] || return 0
  "$PG_DIR/ctl" stop >/dev/null 2>&1 || true
  rm -rf "$PG_DIR"
  PG_DIR=""
}
