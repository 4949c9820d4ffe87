# Sourced by scripts that need private PostgreSQL servers for a moment. `pg_up NAME [SETTINGS]`
# starts one from the machine's binaries (Debian's /usr/lib/postgresql/<major>/bin) on a free
# loopback port under $tmp/NAME and sets url_NAME; everything is stopped and removed on exit.
# Sourcing it starts one server, "main", with $PG_SETTINGS, and sets $url and a psql() for it.
INITDB=$(readlink -f "$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1)")
[ -x "$INITDB" ] || { echo "PostgreSQL server binaries not found: run scripts/install-deps" >&2; exit 1; }
PGBIN=$(dirname "$INITDB")
tmp=$(mktemp -d /tmp/ferry-pg.XXXXXX)
chmod 755 "$tmp"
as_pg() { if [ "$(id -u)" -eq 0 ]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi; }
pg_dirs=()
pg_cleanup() {
  for d in "${pg_dirs[@]}"; do as_pg "$PGBIN/pg_ctl -D $d/data -m immediate stop" >/dev/null 2>&1 || true; done
  rm -rf "$tmp"
}
trap pg_cleanup EXIT
pg_up() {
  local name=$1 settings=${2:-} d="$tmp/$1" port
  mkdir -p "$d" && chmod 755 "$d"
  if [ "$(id -u)" -eq 0 ]; then chown postgres "$d"; fi
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  as_pg "$INITDB -D $d/data -U postgres --auth=trust -E UTF8 --locale=C --no-sync" >/dev/null
  pg_dirs+=("$d")
  as_pg "$PGBIN/pg_ctl -D $d/data -l $d/pg.log -w -o '-p $port -k $d -c listen_addresses=127.0.0.1 \
    -c wal_level=logical -c max_replication_slots=16 -c max_wal_senders=16 $settings' start" >/dev/null
  printf -v "url_$name" 'postgres://postgres@127.0.0.1:%s' "$port"
}
pg_up main "${PG_SETTINGS:-}"
url="$url_main/postgres"
psql() { "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 "$url" "$@"; }
