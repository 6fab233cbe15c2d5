"""``sockredir-lab redirect install|status|policy|uninstall --cgroup PATH``: the redirect on this host."""

from __future__ import annotations

import json
import sys

from lab import api
from lab.bpf import pins, policy, redirect
from lab.vm.target import Target


def register(subparsers) -> None:
    parser = subparsers.add_parser("redirect", help="install, inspect or remove the socket redirect on a cgroup")
    sub = parser.add_subparsers(dest="redirect_command", required=True)

    install = sub.add_parser("install", help="load, pin and attach the redirect to a cgroup")
    _cgroup_option(install)
    install.add_argument("--variant", choices=redirect.VARIANTS, default="production",
                         help="production (default), netns, guarded (production plus a per-message guard: "
                              "bounded like TCP, never slower; needs a read hook), seed (the design "
                              "document's code), auto; or a shape that only watches (never redirects): "
                              "passthrough (sk_msg passes every message), verdict (plus an sk_skb "
                              "verdict passing every skb)")
    install.add_argument("--max-entries", type=int, help="sockhash size (compiled in; default 65535)")
    install.add_argument("--json", action="store_true", help="print the installation as JSON")
    _policy_options(install)
    install.set_defaults(func=cmd_install)

    policy_parser = sub.add_parser(
        "policy", help="which connections the redirect takes, by service port (production and netns)",
        description="Show or set the port policy of an installed redirect. The service port is the "
                    "server's port; a change applies to connections established after it. Without "
                    "--only/--except/--all the policy is shown.")
    _cgroup_option(policy_parser)
    _policy_options(policy_parser)
    policy_parser.add_argument("--json", action="store_true", help="print the policy as JSON")
    policy_parser.set_defaults(func=cmd_policy)

    status = sub.add_parser("status", help="decoded map entries and counters")
    _cgroup_option(status)
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(func=cmd_status)

    uninstall = sub.add_parser("uninstall", help="detach and unpin everything of the redirect")
    _cgroup_option(uninstall)
    uninstall.set_defaults(func=cmd_uninstall)


def _policy_options(parser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--only", metavar="PORTS",
                       help="redirect only connections to these service ports, e.g. 6379,8000-8999")
    group.add_argument("--except", dest="except_ports", metavar="PORTS",
                       help="redirect every connection except those to these service ports")
    group.add_argument("--all", action="store_true", help="redirect every connection (the default)")


def policy_from(args) -> policy.PortPolicy | None:
    if args.only:
        return policy.PortPolicy("only", policy.parse_ports(args.only))
    if args.except_ports:
        return policy.PortPolicy("except", policy.parse_ports(args.except_ports))
    return policy.PortPolicy("all") if args.all else None


def _cgroup_option(parser) -> None:
    parser.add_argument("--cgroup", required=True, metavar="PATH",
                        help="cgroup v2 directory: absolute, or relative to the cgroup2 mount")


def host_target() -> Target:
    return api.host()


def cmd_install(args) -> int:
    target = host_target()
    try:
        installation = redirect.install(target, args.cgroup, args.variant, args.max_entries,
                                        policy_from(args))
    except pins.VerifierRejected as exc:
        print(f"--- verifier log of {exc.program} ---\n{exc.log.rstrip()}\n---", file=sys.stderr)
        raise
    if args.json:
        print(json.dumps(installation.as_dict(), indent=2))
        return 0
    print(f"installed variant {installation.variant} on {installation.cgroup}")
    if installation.fallback_reason:
        print(f"  (asked for {installation.requested}: {installation.fallback_reason})")
    print(f"  pins: {installation.pin_dir}")
    if installation.read_hook:
        print(f"  guard's read hook: {installation.read_hook}")
    for prog in installation.programs.values():
        print(f"  {prog.type:8} {prog.name:15} id {prog.id:<6} verified insns {prog.verified_insns}")
    if policy_from(args):
        print(f"  policy: {policy_from(args).describe()}")
    return 0


def cmd_policy(args) -> int:
    target = host_target()
    wanted = policy_from(args)
    current = (api.set_redirect_policy(target, args.cgroup, wanted) if wanted
               else policy.read(target, redirect.policy_pin_dir(target, args.cgroup)))
    if args.json:
        print(json.dumps(current.as_dict()))
    else:
        print(f"{'set' if wanted else 'policy'} on {args.cgroup}: {current.describe()}")
    return 0


def cmd_status(args) -> int:
    report = redirect.status(host_target(), args.cgroup)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['variant']} on {report['cgroup']} ({'attached' if report['attached'] else 'NOT attached'})")
    print(f"pins: {report['pin_dir']}")
    if report["policy"]:
        print(f"policy: {report['policy']['description']}")
    print(format_entries(report["entries"]))
    if report["counters"]:
        print("counters (all CPUs):")
        for name, value in report["counters"].items():
            print(f"  {name:18} {value}")
    if report["guard"] is not None:
        print(f"guard (read hook: {report['read_hook']}), all CPUs:")
        for name, value in report["guard"].items():
            print(f"  {name:18} {value}")
    if report["watch"] is not None:
        print("watching programs, all CPUs:")
        for name, value in report["watch"].items():
            print(f"  {name:18} {value}")
    return 0


def format_entries(entries: list[dict]) -> str:
    if not entries:
        return "no sockets in the map"
    rows = [("local", "remote", "cookie", "netns")]
    for entry in entries:
        rows.append((_endpoint(entry["local"]), _endpoint(entry["remote"]),
                     str(entry.get("cookie", "-")), str(entry.get("netns", "-"))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines + [f"{len(entries)} socket(s)"])


def _endpoint(endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def cmd_uninstall(args) -> int:
    done = redirect.uninstall(host_target(), args.cgroup)
    print("\n".join(done) if done else f"nothing of the redirect found on {args.cgroup}")
    return 0
