# Sourced (not run) by scripts/setup.sh and scripts/libvhost-user.sh: the cache of fetched
# sources, the log line, and apt lists of our own for deb-src and trixie entries, derived from
# the system's own sources so that no archive host is written in this repository.
#
#   IBNBD_CACHE_DIR  where fetched sources live (default: ~/.cache/ibnbd-vhost; outside any
#                    work tree or installed package, never committed)
#   log_tag          the word in front of each log line (default: setup)
cache="${IBNBD_CACHE_DIR:-${HOME:-/root}/.cache/ibnbd-vhost}"
mkdir -p "$cache"
aptdir="$cache/apt"

log() { printf '%s: %s\n' "${log_tag:-setup}" "$*" >&2; }

system_sources() {
  # deb822 files first, then one-line lists; print "URI|Signed-By" for Debian's main archive.
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '
      BEGIN { RS=""; FS="\n" }
      {
        types=""; uris=""; suites=""; signed="";
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^Types:/)     { types=$i;  sub(/^Types:[ \t]*/, "", types) }
          if ($i ~ /^URIs:/)      { uris=$i;   sub(/^URIs:[ \t]*/, "", uris) }
          if ($i ~ /^Suites:/)    { suites=$i; sub(/^Suites:[ \t]*/, "", suites) }
          if ($i ~ /^Signed-By:/) { signed=$i; sub(/^Signed-By:[ \t]*/, "", signed) }
        }
        if (types ~ /deb/ && suites ~ /(^| )bookworm( |$)/) print uris "|" signed
      }' "$f"
  done
  if [ -f /etc/apt/sources.list ]; then
    awk '$1 == "deb" && $3 == "bookworm" { print $2 "|" }' /etc/apt/sources.list
  fi
}
apt_private() {
  # $1: name of the private list (src | trixie); rest: apt-get arguments.
  local name="$1"; shift
  local dir="$aptdir/$name"
  apt-get -o Dir::Etc::sourcelist="$dir/sources.list" -o Dir::Etc::sourceparts=- \
          -o Dir::State::Lists="$dir/lists" -o Dir::Cache::archives="$dir/archives" \
          -o Debug::NoLocking=1 -o APT::Sandbox::User=root "$@"
}
prepare_private_list() {
  # $1: name; $2: line template with @URI@ (one line per system URI)
  local name="$1" tmpl="$2" line uri signed
  local dir="$aptdir/$name"
  mkdir -p "$dir/lists/partial" "$dir/archives/partial"
  if [ ! -s "$dir/sources.list" ]; then
    : > "$dir/sources.list.new"
    while IFS='|' read -r uri signed; do
      [ -n "$uri" ] || continue
      case "$uri" in *security*) continue ;; esac
      line="${tmpl//@URI@/$uri}"
      if [ -n "$signed" ]; then line="${line//@SIGNED@/[signed-by=$signed]}"; else line="${line//@SIGNED@/}"; fi
      echo "$line" >> "$dir/sources.list.new"
    done < <(system_sources)
    [ -s "$dir/sources.list.new" ] || { log "no Debian bookworm entry in the system's apt sources"; exit 1; }
    mv "$dir/sources.list.new" "$dir/sources.list"
  fi
  if [ ! -f "$dir/updated.stamp" ]; then
    log "apt-get update for the private '$name' list"
    apt_private "$name" update -qq
    touch "$dir/updated.stamp"
  fi
}
