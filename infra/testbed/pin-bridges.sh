#!/usr/bin/env bash
# What the Ansible role's udev rule does on a Podman host (roles/system, podman_files.yml),
# for this machine, which has no udevd: every netavark bridge (`podman<N>`) gets its own MAC
# address set explicitly, so the kernel stops giving it the lowest of its ports' addresses.
# Without it a container leaving a network (an update's old one stopped) changes the bridge's
# address whenever its port had the lowest, and the other containers' replies to the host go
# to the old address until their ARP entries are refreshed: seconds of stalled connections
# (netavark before 1.9; Docker sets its bridges' addresses itself). docs/podman.md, "Bridge
# addresses".
set -uo pipefail
pin() { # NAME
  local dev=/sys/class/net/$1
  # 3: NET_ADDR_SET, an address someone set; the kernel then leaves it alone.
  [ "$(cat "$dev/addr_assign_type" 2>/dev/null)" = 3 ] && return 0
  ip link set dev "$1" address "$(cat "$dev/address")" 2>/dev/null &&
    echo "$(date -u +%FT%T.%3NZ) pinned $1 at $(cat "$dev/address")"
}
for dev in /sys/class/net/podman*; do [ -e "$dev/bridge" ] && pin "${dev##*/}"; done
# `ip -o monitor link` prints a line per change of a link: "N: NAME: <FLAGS> ...", and
# "Deleted N: NAME: ..." for one gone.
ip -o monitor link | while read -r first second _; do
  [ "$first" = Deleted ] && continue
  name=${second%%:*}
  name=${name%%@*}
  case $name in podman[0-9]*) [ -e "/sys/class/net/$name/bridge" ] && pin "$name" ;; esac
done
