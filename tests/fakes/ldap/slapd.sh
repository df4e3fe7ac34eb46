#!/usr/bin/env bash
# A private OpenLDAP server for the ds01 tests, loaded with testbed.ldif. Runs as root; `up` is idempotent.
# It uses its own slapd.conf, database, socket and pidfile under STATE_DIR/ldap, never /etc/ldap's config
# or a system slapd.
#
#   slapd.sh up STATE_DIR               initialise (once) and start; waits until ldapsearch answers
#   slapd.sh down STATE_DIR             stop the server `up` started, by pid
#   eval "$(slapd.sh env STATE_DIR)"    export DS01_TEST_LDAP_URI, _BASE_DN, _BIND_DN and _PASSWORD_FILE
#
# DS01_TEST_LDAP_PORT (default 3890) picks the TCP port on 127.0.0.1; it is recorded when STATE_DIR is
# first initialised and later runs keep the recorded port. DS01_TEST_LDAP_URI is the ldapi:// socket, which
# processes in the test bed's network namespace (the test proxies) reach as well as those on the host.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCHEMA_DIR=/etc/ldap/schema
MODULE_DIR=/usr/lib/ldap
SUFFIX=dc=ds01,dc=test
ROOT_DN=cn=admin,$SUFFIX

log() { printf 'slapd.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  echo "usage: $0 up|down|env STATE_DIR" >&2
  echo "example: $0 up /tmp/ds01-testbed && eval \"\$($0 env /tmp/ds01-testbed)\"" >&2
  exit 2
}

[[ $# -eq 2 ]] || usage
ACTION=$1
STATE_DIR=$(realpath -m -- "$2")
DIR=$STATE_DIR/ldap
CONF=$DIR/slapd.conf
DATA=$DIR/data
PIDFILE=$DIR/slapd.pid
PASSWORD_FILE=$DIR/admin.password
PORT_FILE=$DIR/port
SOCKET=$DIR/ldapi
SERVER_LOG=$DIR/slapd.log
READY=$DIR/initialised

port() { cat "$PORT_FILE"; }
tcp_uri() { printf 'ldap://127.0.0.1:%s/' "$(port)"; }

ldapi_uri() { # the socket path, percent-encoded as an ldapi:// URL wants it
  local path=$SOCKET encoded='' char i
  for ((i = 0; i < ${#path}; i++)); do
    char=${path:i:1}
    case $char in
      [A-Za-z0-9._~-]) encoded+=$char ;;
      *) encoded+=$(printf '%%%02X' "'$char") ;;
    esac
  done
  printf 'ldapi://%s' "$encoded"
}

ours() { # our slapd runs: the pidfile names a live process started with our config file
  [[ -s "$PIDFILE" ]] || return 1
  local pid
  pid=$(cat "$PIDFILE")
  kill -0 "$pid" 2>/dev/null || return 1
  # A pid recycled by an unrelated process must never be signalled.
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "$CONF"
}

answers() { # asked over our own socket, so another server on the same port cannot answer for ours
  ldapsearch -x -LLL -H "$(ldapi_uri)" -o nettimeout=2 -l 2 -b "$SUFFIX" -s base dn >/dev/null 2>&1
}

write_config() {
  local hash
  hash=$(slappasswd -T "$PASSWORD_FILE")
  (
    umask 077
    cat >"$CONF" <<CONF
include $SCHEMA_DIR/core.schema
include $SCHEMA_DIR/cosine.schema
include $SCHEMA_DIR/nis.schema
include $SCHEMA_DIR/inetorgperson.schema

pidfile $PIDFILE
argsfile $DIR/slapd.args
modulepath $MODULE_DIR
moduleload back_mdb

database mdb
maxsize 16777216
suffix "$SUFFIX"
rootdn "$ROOT_DN"
rootpw $hash
directory $DATA
index objectClass eq
index uid,memberUid,cn eq
index uidNumber,gidNumber eq
index member,uniqueMember eq
access to attrs=userPassword by self write by anonymous auth by * none
access to * by * read
CONF
  )
}

initialise() {
  [[ -f "$READY" ]] && return 0
  # A directory left half-built by an interrupted run is rebuilt from scratch.
  rm -rf -- "$DIR"
  mkdir -p "$DATA"
  chmod 0700 "$DIR"
  printf '%s' "${DS01_TEST_LDAP_PORT:-3890}" >"$PORT_FILE"
  (
    umask 077
    head -c 24 /dev/urandom | base64 | tr -d '\n' >"$PASSWORD_FILE"
  )
  write_config
  slaptest -Q -u -f "$CONF" || die "slaptest rejected $CONF"
  slapadd -q -f "$CONF" -l "$HERE/testbed.ldif" || die "slapadd could not load $HERE/testbed.ldif"
  touch "$READY"
  log "initialised $DIR (suffix $SUFFIX, port $(port))"
}

start() {
  if ours && answers; then
    return 0
  fi
  ours && die "slapd (pid $(cat "$PIDFILE")) runs but does not answer on $SOCKET; try: $0 down $STATE_DIR"
  log "starting slapd on $(tcp_uri) and $SOCKET"
  rm -f -- "$PIDFILE" "$SOCKET"
  # -d none keeps slapd in the foreground and sends its errors, not per-operation logs, to our own log.
  setsid slapd -d none -f "$CONF" -h "$(tcp_uri) $(ldapi_uri)" </dev/null >>"$SERVER_LOG" 2>&1 &
  local server=$! waited=0
  until answers; do
    if ! kill -0 "$server" 2>/dev/null; then
      tail -n 20 "$SERVER_LOG" >&2 || true
      die "slapd exited at start (is port $(port) taken? log: $SERVER_LOG)"
    fi
    sleep 0.5
    waited=$((waited + 1))
    if [[ $waited -ge 60 ]]; then
      tail -n 20 "$SERVER_LOG" >&2 || true
      die "slapd did not answer on $(tcp_uri) within 30 s (log: $SERVER_LOG)"
    fi
  done
}

cmd_up() {
  [[ $EUID -eq 0 ]] || die "the test directory server runs as root"
  local tool
  for tool in slapd slapadd slappasswd ldapsearch; do
    command -v "$tool" >/dev/null || die "$tool is missing; install it with: apt-get install -y slapd ldap-utils"
  done
  mkdir -p "$STATE_DIR"
  initialise
  start
  log "up: $(tcp_uri), base $SUFFIX, state $DIR"
}

cmd_down() {
  ours || return 0
  local pid
  pid=$(cat "$PIDFILE")
  log "stopping slapd (pid $pid)"
  kill -TERM "$pid"
  for _ in $(seq 60); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.5
  done
  die "slapd (pid $pid) did not stop within 30 s"
}

cmd_env() {
  [[ -f "$READY" ]] || die "no test directory under $DIR; run: $0 up $STATE_DIR"
  printf 'export %s=%q\n' \
    DS01_TEST_LDAP_URI "$(ldapi_uri)" \
    DS01_TEST_LDAP_BASE_DN "$SUFFIX" \
    DS01_TEST_LDAP_BIND_DN "$ROOT_DN" \
    DS01_TEST_LDAP_PASSWORD_FILE "$PASSWORD_FILE"
}

case $ACTION in
  up) cmd_up ;;
  down) cmd_down ;;
  env) cmd_env ;;
  *) usage ;;
esac
