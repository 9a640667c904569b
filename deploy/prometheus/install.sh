#!/usr/bin/env bash
# Install the Prometheus server and promtool binaries (Debian's `prometheus` package) for the
# monitoring test (tests/test_deploy_monitoring.py). Idempotent: does nothing when present.
# We only want the binaries: the package's own service is stopped and disabled afterwards so
# it does not scrape or hold port 9090 on a CI/lab machine.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends prometheus
fi

# Stop/disable whatever the package started (systemd on a lab machine, sysvinit in containers).
# `systemctl disable` also works without a running systemd (it only removes the wants links).
for svc in prometheus prometheus-node-exporter; do
  if command -v systemctl >/dev/null 2>&1; then
    if [ -d /run/systemd/system ]; then
      $SUDO systemctl stop "$svc.service" >/dev/null 2>&1 || true
    fi
    $SUDO systemctl disable "$svc.service" >/dev/null 2>&1 || true
  fi
  if [ -x "/etc/init.d/$svc" ]; then
    $SUDO "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
  fi
  if command -v update-rc.d >/dev/null 2>&1 && [ -e "/etc/init.d/$svc" ]; then
    $SUDO update-rc.d "$svc" disable >/dev/null 2>&1 || true
  fi
done

prometheus --version 2>&1 | head -1
promtool --version 2>&1 | head -1
