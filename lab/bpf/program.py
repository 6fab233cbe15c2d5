"""A redirect program the lab did not write, judged like its own: ``suite --program FILE``.

What such a program must provide (README "Judge your own redirect"): one object with a
``sock_ops`` program that inserts established TCP sockets into a ``BPF_MAP_TYPE_SOCKHASH`` or
``SOCKMAP``, and an ``sk_msg`` program that redirects with ``bpf_msg_redirect_hash``/``_map``
(names given with ``--sockops``/``--skmsg``/``--map`` when the object has several of a kind). A
``.bpf.c`` is built like ``verify`` builds one (``vmlinux.h`` and the libbpf headers on the
include path). The lab's own counters are absent, so the checks judge by what the kernel shows:
the map's entries (their number, and the socket under each key by cookie when the values are
8 bytes), the TCP data segments each connection side sent (``tcpi_data_segs_out``), loopback
packets, Tcp OutSegs, tracepoints, the kprobe on ``tcp_bpf_sendmsg``, and the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lab import LabError
from lab.bpf import build as bpf_build
from lab.bpf import redirect
from lab.vm.target import Target

FAMILIES = ("ipv4", "ipv6")


@dataclass(frozen=True)
class UserProgram:
    path: Path
    sockops: str | None = None   # the sock_ops program's name, when the object has several
    skmsg: str | None = None     # the sk_msg program's name, likewise
    map: str | None = None       # the socket map's name, likewise
    families: tuple[str, ...] = ("ipv4",)   # what it claims to redirect (ipv6 includes v4-mapped)
    defines: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(".o").removesuffix(".c").removesuffix(".bpf")

    def object(self) -> Path:
        path = Path(self.path).expanduser().resolve()
        if not path.is_file():
            raise LabError(f"{self.path} does not exist; give a .bpf.c source or a .o object")
        unknown = set(self.families) - set(FAMILIES)
        if unknown or "ipv4" not in self.families:
            raise LabError(f"families {','.join(self.families)}: a redirect handles ipv4, and "
                           "may claim ipv6 too (ipv4 or ipv4,ipv6)")
        if path.name.endswith(".o"):
            return path
        return bpf_build.build(path, self.defines)

    def install(self, target: Target, cgroup: str) -> redirect.Installation:
        """Load, pin and attach on ``cgroup``; removed by ``redirect.uninstall`` like the lab's own."""
        return redirect.install_object(target, cgroup, self.object(), f"program:{self.name}",
                                       requested=str(self.path), names=(self.sockops, self.skmsg, self.map))
