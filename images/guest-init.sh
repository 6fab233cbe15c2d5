#!/bin/sh
# PID 1 of a lab guest, installed in the image as /sbin/lab-init (no systemd: a guest is up in
# seconds). The initramfs has already mounted the root read-write (the disk is snapshot=on, so writes
# vanish with the guest), moved /dev, /proc and /sys over, and mounted this kernel's modules at
# /lib/modules/$(uname -r).
# Order matters: sshd must be listening before the ready line, because the host connects as soon as
# it sees that line (QEMU's hostfwd accepts TCP at once, so an early client just blocks).

PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
umask 022

# mnt FSTYPE DIR [OPTIONS]: mount unless something is mounted there already. Shell builtins only
# around the one `mount`: under TCG every exec of a dynamically linked tool costs tens of ms.
mounted=$(cat /proc/mounts 2>/dev/null)
mnt() {
    case "$mounted" in *" $2 "*) return 0 ;; esac
    [ -d "$2" ] || mkdir -p "$2"
    mount -t "$1" ${3:+-o "$3"} "$1" "$2" || echo "lab-init: cannot mount $1 on $2" >&2
}

mnt proc /proc
mnt sysfs /sys
mnt devtmpfs /dev
mnt devpts /dev/pts "gid=5,mode=620,ptmxmode=666"
mnt tmpfs /dev/shm "mode=1777"
mnt tmpfs /run "mode=755"
mnt tmpfs /tmp "mode=1777"
mnt cgroup2 /sys/fs/cgroup "nsdelegate"
mnt bpf /sys/fs/bpf "mode=700"
mnt tracefs /sys/kernel/tracing
mnt debugfs /sys/kernel/debug
# Under QEMU's TCG (no KVM) a vCPU can run an int3 that text_poke_bp has already written back while
# another vCPU patches the code it runs, and the kernel oopses ("Oops: int3" in try_to_wake_up,
# __schedule, ttwu_do_activate: every kernel here, docs/lab.md). Each tracing instance that sets a pid
# filter (the scenarios' tracing, scenarios/tracefs.sh) registers the scheduler's probes, and the
# first two re-patch those hottest call sites. Two instances holding a pid filter from boot keep them
# on the probe iterator, so no scenario patches them again.
for hold in lab-hold-1 lab-hold-2; do
    mkdir -p /sys/kernel/tracing/instances/$hold 2>/dev/null \
        && echo 1 > /sys/kernel/tracing/instances/$hold/set_event_pid 2>/dev/null
done
# The kernel boots with `quiet`; from here on, warnings and worse (WARN splats, BUG, Oops) reach
# the console log again, where the host looks for them.
echo 5 > /proc/sys/kernel/printk
ln -sf /proc/self/fd /dev/fd 2>/dev/null
ln -sf /proc/mounts /etc/mtab 2>/dev/null

read -r hostname < /etc/hostname && echo "$hostname" > /proc/sys/kernel/hostname

# Network: loopback, and the first NIC with the address QEMU's user-mode (slirp) network expects.
# The host starts QEMU with restrict=on, so this NIC reaches nothing but the forwarded SSH port.
nic=
for dev in /sys/class/net/*; do
    name=${dev##*/}
    [ "$name" = lo ] && continue
    nic=$name
    break
done
if [ -n "$nic" ]; then
    printf 'link set lo up\nlink set %s up\naddr add 10.0.2.15/24 dev %s\n' "$nic" "$nic" | ip -batch -
else
    ip link set lo up
    echo "lab-init: no network interface found (is virtio_net loaded?)" >&2
fi

# sshd in the foreground of a background job, so PID 1 reaps it; then wait until it listens on 22
# (0016 in /proc/net/tcp, state 0A = LISTEN).
mkdir -p /run/sshd
chmod 755 /run/sshd
# -r: no re-exec per connection (one exec less before the first command).
/usr/sbin/sshd -D -r -E /run/sshd.log &
listening=
i=0
while [ $i -lt 1000 ]; do
    if grep -q ':0016 [0-9A-F:]* 0A' /proc/net/tcp /proc/net/tcp6 2>/dev/null; then
        listening=yes
        break
    fi
    i=$((i + 1))
    sleep 0.01
done
[ -n "$listening" ] || { echo "lab-init: sshd is not listening:" >&2; cat /run/sshd.log >&2; }

# Read what the host's first SSH login runs (sshd's key exchange, bash, the file server) into the
# page cache: a guest restored from a snapshot of this moment then pages none of it in from disk
# (lab/vm/snapshot.py). The restored guest's reseed (images/guest-restored.c) is static and small.
cat /usr/sbin/sshd /usr/lib/x86_64-linux-gnu/libcrypto.so.3 /usr/bin/bash \
    /usr/lib/openssh/sftp-server >/dev/null 2>&1

read -r uptime _ < /proc/uptime
echo "SOCKREDIR-READY uptime=$uptime release=$(uname -r)"

# Stay PID 1 and reap orphans: `wait` makes the shell call waitpid(-1), which collects any child.
while :; do
    sleep 3600 &
    wait $!
done
