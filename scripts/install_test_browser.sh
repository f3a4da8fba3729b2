#!/usr/bin/env bash
# Install the headless Chromium that the `rlkit report` browser tests drive (tests/e2e/test_observability.py).
#
#   bash scripts/install_test_browser.sh
#
# Installs Debian's `chromium` package with apt-get when all of these hold: no Chromium is on PATH,
# this runs as root, and the system is Debian or Ubuntu. Otherwise it installs nothing, says in one
# line why, and exits 0 (the browser tests then skip with their own reason); likewise where apt has no
# `chromium` package (Ubuntu ships Chromium as a snap, which does not run in containers). Safe to
# run again: with a Chromium on PATH it only names it. Quiet: apt's output goes to a log file, shown
# only when apt-get fails (still exit 0: a package mirror's hiccup skips the browser tests, with
# their reason in pytest's summary, rather than failing the whole test command).
# Measured on the 2-core CI machine (Debian 12, bookworm): 35 s (Chromium 156 and its libraries).
set -euo pipefail

NAMES=(chromium chromium-browser google-chrome chrome)

for name in "${NAMES[@]}"; do
    if found="$(command -v "$name")"; then
        echo "install_test_browser.sh: $found is already installed; nothing to do"
        exit 0
    fi
done

if [ "$(id -u)" -ne 0 ]; then
    echo "install_test_browser.sh: not root, Chromium not installed (run it as root, or: sudo apt-get install -y chromium)"
    exit 0
fi

distro=""
if [ -r /etc/os-release ]; then
    # shellcheck disable=SC1091
    distro="$(. /etc/os-release && echo "${ID:-} ${ID_LIKE:-}")"
fi
case " $distro " in
    *" debian "* | *" ubuntu "*) ;;
    *)
        echo "install_test_browser.sh: not Debian/Ubuntu (${distro:-unknown}), Chromium not installed; install it with your package manager"
        exit 0
        ;;
esac
if ! command -v apt-get >/dev/null; then
    echo "install_test_browser.sh: no apt-get on this system, Chromium not installed"
    exit 0
fi

log="$(mktemp "${TMPDIR:-/tmp}/install_test_browser.XXXXXX.log")"
started=$SECONDS
apt_failed() {  # the browser tests then skip, each with its reason in pytest's summary
    tail -n 20 "$log" >&2
    echo "install_test_browser.sh: apt-get $1 failed, Chromium not installed (full log: $log)" >&2
    exit 0
}
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >"$log" 2>&1 || apt_failed update
candidate="$(apt-cache policy chromium 2>/dev/null | awk '/Candidate:/ {print $2}')"
if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
    rm -f "$log"
    echo "install_test_browser.sh: apt has no chromium package here, Chromium not installed"
    exit 0
fi
apt-get install -y -qq --no-install-recommends chromium >>"$log" 2>&1 || apt_failed install
rm -f "$log"
echo "install_test_browser.sh: installed $(chromium --version 2>/dev/null || echo chromium) in $((SECONDS - started)) s"
