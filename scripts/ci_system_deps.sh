#!/usr/bin/env bash
# Debian packages the deploy tests use, installed only when missing (idempotent, safe to re-run).
#   promtool + prometheus  (package `prometheus`)      -> tests/deploy: check config/rules, scrape test
#   docker-compose v1.29.2 (package `docker-compose`)  -> tests/deploy: `docker-compose config`, no engine needed
#   chromium               (package `chromium`)        -> tests/ui: the budget page in a headless browser
#   WordNet's data files   (package `wordnet-base`)    -> the built-in WordNet suite and training sentences
#                                                         (without it both silently leave WordNet out)
# Needs root and apt-get; otherwise it only reports what is missing (the tests then skip with a reason).
set -euo pipefail

declare -A want=([promtool]=prometheus [prometheus]=prometheus [docker-compose]=docker-compose [chromium]=chromium)
missing=()
for tool in promtool prometheus docker-compose chromium; do
  if command -v "$tool" >/dev/null 2>&1; then
    echo "ci_system_deps: $tool present ($(command -v "$tool"))"
  else
    pkg="${want[$tool]}"
    [[ " ${missing[*]-} " == *" $pkg "* ]] || missing+=("$pkg")
  fi
done

if [ -f /usr/share/wordnet/data.noun ]; then
  echo "ci_system_deps: wordnet-base present (/usr/share/wordnet)"
else
  missing+=(wordnet-base)
fi

if [ "${#missing[@]}" -eq 0 ]; then
  echo "ci_system_deps: nothing to install"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "ci_system_deps: missing ${missing[*]} but not root or no apt-get; deploy and UI tests that need them will skip"
  exit 0
fi

echo "ci_system_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# We only need the binaries: keep the packages' init scripts from starting a system-wide prometheus
# (policy-rc.d exit 101 = "action forbidden"), unless the machine already has a policy of its own.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
# --no-install-recommends keeps the prometheus package from pulling in its web UI assets and extras.
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for tool in promtool prometheus docker-compose chromium; do
  if command -v "$tool" >/dev/null 2>&1; then
    echo "ci_system_deps: $tool -> $(command -v "$tool")"
  else
    echo "ci_system_deps: WARNING $tool still missing" >&2
  fi
done
[ -f /usr/share/wordnet/data.noun ] || echo "ci_system_deps: WARNING wordnet-base still missing" >&2
