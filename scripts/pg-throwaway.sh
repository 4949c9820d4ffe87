# Sourced by scripts that need a private PostgreSQL for a moment: starts one from the machine's
# binaries (Debian's /usr/lib/postgresql/<major>/bin) on a free loopback port in a temporary
# directory, sets $tmp, $url and a psql() function, and removes everything on exit.
# Extra server settings: PG_SETTINGS="-c name=value ...".
INITDB=$(readlink -f "$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1)")
[ -x "$INITDB" ] || { echo "PostgreSQL server binaries not found: run scripts/install-deps" >&2; exit 1; }
PGBIN=$(dirname "$INITDB")
tmp=$(mktemp -d /tmp/ferry-pg.XXXXXX)
chmod 755 "$tmp"
as_pg() { if [ "$(id -u)" -eq 0 ]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi; }
if [ "$(id -u)" -eq 0 ]; then chown postgres "$tmp"; fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pg_cleanup() { as_pg "$PGBIN/pg_ctl -D $tmp/data -m immediate stop" >/dev/null 2>&1 || true; rm -rf "$tmp"; }
trap pg_cleanup EXIT
as_pg "$INITDB -D $tmp/data -U postgres --auth=trust -E UTF8 --locale=C --no-sync" >/dev/null
as_pg "$PGBIN/pg_ctl -D $tmp/data -l $tmp/pg.log -w -o '-p $port -k $tmp -c listen_addresses=127.0.0.1 \
  -c wal_level=logical -c max_replication_slots=16 -c max_wal_senders=16 ${PG_SETTINGS:-}' start" >/dev/null
url="postgres://postgres@127.0.0.1:$port/postgres"
psql() { "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 "$url" "$@"; }
