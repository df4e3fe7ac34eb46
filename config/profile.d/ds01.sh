# shellcheck shell=sh
# ds01: every Docker client in a login shell talks to the ds01 proxy, which enforces GPU grants and limits.
# Installed as /etc/profile.d/ds01.sh by `make install`.
export DOCKER_HOST=unix:///run/ds01/docker.sock
case ":${PATH}:" in
  *:/usr/local/lib/ds01/bin:*) ;;
  *) PATH="/usr/local/lib/ds01/bin:${PATH}" ;;
esac
export PATH
# At an interactive login, one line for each batch job that ended since the last one (quiet when none, and
# when the proxy does not answer within 3 seconds).
if [ -t 1 ] && command -v container >/dev/null 2>&1; then
  timeout 3 container jobs --since-login 2>/dev/null || true
fi
