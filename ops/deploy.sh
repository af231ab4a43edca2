#!/usr/bin/env bash
# One-line deploy of new code into a running node, without dropping a connection:
#   ops/deploy.sh [whatsup-shell options] whatsup.c2s.session [whatsup.routing.router ...]
#   e.g. ops/deploy.sh --data-dir /srv/whatsup whatsup.c2s.session
#   in a cluster, --all-nodes rolls each module through every node, one after the other
# Put the new files in place first (git pull, rsync...). Each module is compiled and imported
# before anything changes, then swapped into its live processes between two messages; the first
# module that fails to load stops the deploy with a non-zero exit, and the old code keeps running.
set -euo pipefail
usage="usage: $0 [whatsup-shell options] whatsup.MODULE...  (hot-loads each MODULE into the running node)"
case "${1:-}" in -h | --help) echo "$usage"; exit 0 ;; esac
opts=() mods=() prev=
for arg in "$@"; do
  case "$prev:$arg" in
    --config:* | --socket:* | --data-dir:* | --timeout:*) opts+=("$arg") ;;  # an option's value (whatsup.toml)
    *:whatsup.*) mods+=(--reload "$arg") ;;
    *) opts+=("$arg") ;;
  esac
  prev=$arg
done
[ ${#mods[@]} -gt 0 ] || { echo "$usage" >&2; exit 2; }
exec "$(dirname "$0")/../bin/whatsup-shell" "${opts[@]}" "${mods[@]}"
