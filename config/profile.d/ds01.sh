# shellcheck shell=sh
# ds01: every Docker client in a login shell talks to the ds01 proxy, which enforces GPU grants and limits.
# Installed as /etc/profile.d/ds01.sh by `make install`.
export DOCKER_HOST=unix:///run/ds01/docker.sock
case ":${PATH}:" in
  *:/usr/local/lib/ds01/bin:*) ;;
  *) PATH="/usr/local/lib/ds01/bin:${PATH}" ;;
esac
export PATH
