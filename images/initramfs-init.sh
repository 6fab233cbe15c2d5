#!/bin/sh
# /init of the lab's per-kernel initramfs (busybox only). It loads the modules needed to reach the
# root disk and the NIC, in the order the host computed from the kernel's module metadata
# (/lib/modules/load-order), mounts the root read-write (the disk is
# snapshot=on, so writes vanish with the guest), mounts the kernel's modules disk read-only at
# /lib/modules/$(uname -r) in the new root, and hands over to the guest's init.
#
# Kernel command line: lab.root=LABEL=x|/dev/x  lab.modules=LABEL=y|/dev/y  lab.init=/sbin/lab-init
# lab.probe=1 only prints a line and powers off (the host's KVM probe: does a real boot work?).

export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() {
    echo "SOCKREDIR-INITRAMFS-FAILED: $*"
    poweroff -f
}

root=LABEL=sockredir-root
modules=LABEL=sockredir-mods
init=/sbin/lab-init
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        lab.root=*) root=${arg#lab.root=} ;;
        lab.modules=*) modules=${arg#lab.modules=} ;;
        lab.init=*) init=${arg#lab.init=} ;;
        lab.probe=1)
            echo "SOCKREDIR-PROBE-OK release=$(uname -r)"
            poweroff -f ;;
    esac
done

# "required NAME.ko" must load; "optional NAME.ko" is one alternative of an alias (crc32c_intel or
# crc32c_generic for crypto-crc32c) or a soft dependency, as modprobe would try it.
while read -r need module; do
    if ! insmod "/lib/modules/$module"; then
        [ "$need" = required ] && fail "insmod $module"
        echo "SOCKREDIR-INITRAMFS: optional module $module did not load"
    fi
done < /lib/modules/load-order

# device SPEC: print the block device for LABEL=x or /dev/x, waiting up to 5 s (of guest uptime:
# under TCG a loop count says little about time) for a driver that finishes probing late.
device() {
    read -r now _ < /proc/uptime
    deadline=$((${now%.*} + 5))
    while :; do
        case "$1" in
            LABEL=*) dev=$(findfs "$1" 2>/dev/null) && { echo "$dev"; return 0; } ;;
            *) [ -b "$1" ] && { echo "$1"; return 0; } ;;
        esac
        read -r now _ < /proc/uptime
        [ "${now%.*}" -ge "$deadline" ] && return 1
        usleep 20000
    done
}

mkdir -p /newroot
rootdev=$(device "$root") || fail "root disk $root not found (block devices: $(ls /sys/block))"
mount -t ext4 -o rw "$rootdev" /newroot || fail "cannot mount root $rootdev"
[ -x "/newroot$init" ] || fail "no executable $init in the root filesystem"

release=$(uname -r)
moddev=$(device "$modules") || fail "modules disk $modules not found"
mkdir -p "/newroot/lib/modules/$release"
mount -t ext4 -o ro "$moddev" "/newroot/lib/modules/$release" || fail "cannot mount modules $moddev"

for fs in dev proc sys; do
    mkdir -p "/newroot/$fs"
    mount --move "/$fs" "/newroot/$fs"
done
# The guest init mounts whatever is missing, but busybox is static and util-linux's mount is not:
# under TCG each dynamically linked exec costs ~0.1 s, so the usual set is mounted here.
m() { mkdir -p "/newroot$2" && mount -t "$1" ${3:+-o "$3"} "$1" "/newroot$2"; }
m devpts /dev/pts "gid=5,mode=620,ptmxmode=666"
m tmpfs /dev/shm "mode=1777"
m tmpfs /run "mode=755"
m tmpfs /tmp "mode=1777"
m cgroup2 /sys/fs/cgroup "nsdelegate"
m bpf /sys/fs/bpf "mode=700"
m tracefs /sys/kernel/tracing
m debugfs /sys/kernel/debug
exec switch_root /newroot "$init"
