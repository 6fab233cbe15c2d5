"""The options that name a redirect program the lab did not write (``--program`` and its parts),
shared by the commands that judge one (``suite``, ``conformance``)."""

from __future__ import annotations

from pathlib import Path

from lab import LabError
from lab.bpf.program import UserProgram


def add(parser, families: bool = True) -> None:
    parser.add_argument("--program", type=Path, metavar="FILE.bpf.c|FILE.o",
                        help="judge this redirect instead of the lab's (a sock_ops program, an sk_msg "
                             "program and a SOCKHASH or SOCKMAP; see the README)")
    parser.add_argument("--sockops", metavar="NAME", help="with --program: its sock_ops program, if several")
    parser.add_argument("--skmsg", metavar="NAME", help="with --program: its sk_msg program, if several")
    parser.add_argument("--map", metavar="NAME", help="with --program: its socket map, if several")
    if families:
        parser.add_argument("--families", default="ipv4", metavar="ipv4[,ipv6]",
                            help="with --program: what it redirects (default ipv4; ipv6 adds the IPv6 "
                                 "and v4-mapped scenarios)")


def program_of(args) -> UserProgram | None:
    """The program the options name (built now: a build error or a bad option is reported before
    any guest boots), or None."""
    if not args.program:
        if args.sockops or args.skmsg or args.map:
            raise LabError("--sockops, --skmsg and --map name the parts of a --program")
        return None
    families = tuple(f.strip() for f in getattr(args, "families", "ipv4").split(",") if f.strip())
    program = UserProgram(args.program, args.sockops, args.skmsg, args.map, families)
    program.object()
    return program
