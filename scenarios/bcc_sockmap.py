#!/usr/bin/env python3
"""The redirect and its bypass proof through bcc: loader + tracer compiled at run time, JSON out.

Runs as root in a guest whose kernel headers are reachable (BCC_KERNEL_SOURCE, or
/lib/modules/$(uname -r)/build), with the system Python (python3-bpfcc). It:

  1. compiles the tracer (bcc_tracer.bpf.c: tracepoint counts of loopback packets and non-SSH
     tcp_probe, a kprobe count of tcp_bpf_sendmsg) and times the compile;
  2. runs one connection with data both ways (pair.py in a fresh network namespace, both sides in
     a fresh cgroup) without the redirect: the baseline;
  3. compiles and loads the redirect (bcc_sockmap.bpf.c: sock_ops + sk_msg, as bcc's
     examples/networking/sockmap.py does), attaches it to that cgroup and to its SOCKHASH;
  4. runs the same connection again; while it is open the SOCKHASH is dumped with bpftool (bcc's
     Python API cannot read a SOCKHASH), and once more after it closed.

Prints one JSON object: compile seconds, per round the tracer counts during the connection, pair.py's
own result (byte counts, SHA-256 check, the namespace's loopback and TCP counters for the data
phase) and the map entries.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from bcc import BPF, BPFAttachType
from bcc.libbcc import lib

HERE = os.path.dirname(os.path.abspath(__file__))
COUNTERS = ("net_dev_xmit_lo", "netif_receive_skb_lo", "tcp_probe", "tcp_bpf_sendmsg")


def cgroup2_mount() -> str:
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[2] == "cgroup2":
                return fields[1]
    raise SystemExit("no cgroup2 mount in /proc/self/mounts: mount -t cgroup2 none /sys/fs/cgroup")


def compile_bpf(path: str) -> tuple[BPF, float]:
    started = time.monotonic()
    bpf = BPF(src_file=path.encode())
    return bpf, time.monotonic() - started


def read_counts(tracer: BPF) -> dict[str, int]:
    table = tracer["counts"]
    return {name: table[table.Key(index)].value for index, name in enumerate(COUNTERS)}


def zero_counts(tracer: BPF) -> None:
    table = tracer["counts"]
    for index in range(len(COUNTERS)):
        table[table.Key(index)] = table.Leaf(0)


def map_id_of(map_fd: int) -> int:
    with open(f"/proc/self/fdinfo/{map_fd}") as info:
        for line in info:
            if line.startswith("map_id:"):
                return int(line.split()[1])
    raise RuntimeError("no map_id in the map's fdinfo")


def dump_entries(map_id: int) -> dict:
    proc = subprocess.run(["bpftool", "-j", "map", "dump", "id", str(map_id)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip() or proc.stdout.strip(), "entries": None}
    entries = json.loads(proc.stdout or "[]")
    return {"entries": len(entries), "keys": [e.get("key") for e in entries]}


def run_pair(args, cgroup: str, tracer: BPF, map_id: int | None) -> dict:
    """One connection; the tracer's counts cover connect, data and the moment before close."""
    with tempfile.TemporaryDirectory(prefix="bcc-pair.") as hold:
        zero_counts(tracer)
        argv = ["unshare", "-n", sys.executable, args.pair, "--lo-up", "--bytes", str(args.bytes),
                "--chunk", str(args.chunk), "--server-cgroup", cgroup, "--client-cgroup", cgroup,
                "--hold-dir", hold, "--timeout", str(args.timeout)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        state = os.path.join(hold, "state.json")
        deadline = time.monotonic() + args.timeout
        while not os.path.exists(state) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        counts = read_counts(tracer)
        open_map = dump_entries(map_id) if map_id is not None else None
        with open(os.path.join(hold, "release"), "w"):
            pass
        try:
            out, err = proc.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    try:
        pair = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        pair = {"error": f"pair.py printed no JSON (exit {proc.returncode}): {err.strip()[-500:]}"}
    return {"counts": counts, "pair": pair, "map_open": open_map,
            "map_closed": dump_entries(map_id) if map_id is not None else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default=os.path.join(HERE, "pair.py"))
    parser.add_argument("--bytes", type=int, default=8 << 20)
    parser.add_argument("--chunk", type=int, default=64 << 10)
    parser.add_argument("--timeout", type=int, default=120)
    args = parser.parse_args()

    result: dict = {"kernel": os.uname().release, "error": None, "compile_seconds": {},
                    "bcc_kernel_source": os.environ.get("BCC_KERNEL_SOURCE")}
    cgroup = os.path.join(cgroup2_mount(), f"sockredir-bcc-{os.getpid()}")
    os.mkdir(cgroup)
    cgroup_fd = os.open(cgroup, os.O_RDONLY)
    attached = []
    try:
        tracer, result["compile_seconds"]["tracer"] = compile_bpf(os.path.join(HERE, "bcc_tracer.bpf.c"))
        result["baseline"] = run_pair(args, cgroup, tracer, None)

        redirect, result["compile_seconds"]["redirect"] = compile_bpf(
            os.path.join(HERE, "bcc_sockmap.bpf.c"))
        started = time.monotonic()
        sockops = redirect.load_func(b"sockops_file_socket", BPF.SOCK_OPS)
        verdict = redirect.load_func(b"msg_redirect_to_peer", BPF.SK_MSG)
        # bcc 0.26's Table wrapper refuses a SOCKHASH ("Unknown table type 18"): take its fd from
        # libbcc, as the wrapper itself would
        sock_hash_fd = lib.bpf_table_fd(redirect.module, b"sock_hash")
        if sock_hash_fd < 0:
            raise RuntimeError("libbcc has no table sock_hash in the compiled redirect")
        redirect.attach_func(verdict, sock_hash_fd, BPFAttachType.SK_MSG_VERDICT)
        attached.append(lambda: redirect.detach_func(verdict, sock_hash_fd,
                                                     BPFAttachType.SK_MSG_VERDICT))
        redirect.attach_func(sockops, cgroup_fd, BPFAttachType.CGROUP_SOCK_OPS)
        attached.append(lambda: redirect.detach_func(sockops, cgroup_fd,
                                                     BPFAttachType.CGROUP_SOCK_OPS))
        result["load_attach_seconds"] = time.monotonic() - started
        result["sockhash_id"] = map_id_of(sock_hash_fd)
        result["redirect"] = run_pair(args, cgroup, tracer, result["sockhash_id"])
    except Exception as exc:  # reported in the JSON: the caller shows it with the rest
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        for detach in reversed(attached):
            try:
                detach()
            except Exception as exc:
                result.setdefault("cleanup_errors", []).append(str(exc))
        os.close(cgroup_fd)
        os.rmdir(cgroup)
    print(json.dumps(result))
    return 0 if result["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
