#!/bin/sh
# Regenerate the vendored vmlinux.h from a kernel's BTF.
#
# The BPF objects are CO-RE: built once against this header, they load on every guest kernel
# (5.10 .. 7.2) because libbpf relocates field offsets against the running kernel's BTF.
# The vendored copy was generated on the lab host (kernel 6.18, bpftool 7.1):
#
#   bpf/regen-vmlinux.sh                      # from the running kernel
#   bpf/regen-vmlinux.sh /path/to/vmlinux     # from another kernel's BTF (ELF with .BTF or raw BTF)
set -eu
btf="${1:-/sys/kernel/btf/vmlinux}"
out="$(dirname "$0")/vmlinux.h"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
bpftool btf dump file "$btf" format c > "$tmp"
mv "$tmp" "$out"
trap - EXIT
echo "wrote $out from $btf ($(wc -l < "$out") lines)"
