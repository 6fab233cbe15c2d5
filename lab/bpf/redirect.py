"""Install, inspect and remove the socket redirect on a target, with bpftool only.

Everything goes through ``target.run`` and ``bpftool -j``, so the same code drives the host and
the guests. One installation = one cgroup, loaded and pinned by ``lab.bpf.pins`` under
``<bpffs>/sockredir-lab/<cgroup slug>/`` (``progs/``, ``maps/``, ``links/``).

The sockops program is attached to the cgroup (``multi``, so it composes with other programs);
the sk_msg program is attached to the sockhash as its msg_verdict program. Installs on different
cgroups have different pin directories and coexist.

Variants: ``production`` (IPv4 + IPv6, counters), ``netns`` (production plus the netns cookie in
the key; needs ``bpf_get_netns_cookie`` in sock_ops and sk_msg), ``guarded`` (production, with the
netns cookie where offered, plus a per-message guard that sends a message over TCP where the
redirect would queue without bound, reorder or lose to TCP; it needs a read hook, the first of
``READ_HOOKS`` the kernel accepts, attached as a pinned link under ``links/``), ``seed`` (the design
document's code, IPv4 only), ``auto`` (netns when the kernel offers the helper to both program
types, else production; probed, not guessed from the version).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from lab import BPF_DIR, LabError
from lab.bpf import build as bpf_build
from lab.bpf import cgroups
from lab.bpf import keys
from lab.bpf import links
from lab.bpf import policy
from lab.bpf.bpftool import bpftool_batch
from lab.bpf.pins import (PIN_PARENT, LoadError, Program, VerifierRejected, bpffs_mounts, ensure_bpffs, load,
                          pinned, pinned_maps)
from lab.vm.target import Target

VARIANTS = ("production", "netns", "guarded", "seed", "auto", "passthrough", "verdict")
# Never chosen by auto: they do not redirect. The shapes of programs that only watch traffic
# (bpf/sockredir_watch.h), installed like a redirect so the lab can compare them with plain TCP.
WATCHING = ("passthrough", "verdict")

# Program names of every variant: how uninstall recognises our programs even without pins.
SOCKOPS_PROGRAMS = {"sredir_ops": "production", "sredir_ops_ns": "netns", "sredir_ops_g": "guarded",
                    "sredir_ops_gn": "guarded", "bpf_sockmap": "seed", "sredir_ops_w": "passthrough",
                    "sredir_ops_wv": "verdict"}


@dataclass(frozen=True)
class ReadHook:
    """One form of the guarded variant's read hook (``SOCKREDIR_READER`` in bpf/sockredir_guard.h)."""
    form: str
    define: int
    program: str
    link_kind: str
    point: str
    needs: str


# Tried in this order; the first the kernel loads and attaches is used. The tracepoint first: it
# needs no tracing program (this project's host refuses those with EPERM) and no signature.
READ_HOOKS = (
    ReadHook("tracepoint", 1, "sredir_read_tp", "raw_tracepoint", "sock_recv_length",
             "the sock:sock_recv_length tracepoint (Linux 6.3+)"),
    # The pre-5.19 signature before the current one: on a later kernel the verifier refuses it
    # (a 7th argument), while the current form would load on an older kernel and read the wrong one.
    ReadHook("fexit-nonblock", 3, "sredir_read_fx", "tracing", "-",
             "fexit on tcp_bpf_recvmsg, pre-5.19 signature (tracing programs allowed)"),
    ReadHook("fexit", 2, "sredir_read_fx", "tracing", "-",
             "fexit on tcp_bpf_recvmsg (tracing programs allowed)"),
)
GUARD_COUNTERS_MAP = "sredir_guard_counters"
WATCH_COUNTERS_MAP = "sredir_watch_counters"
READ_HOOK_PROGRAMS = {"sredir_read_tp": "tracepoint sock_recv_length",
                      "sredir_read_fx": "fexit tcp_bpf_recvmsg"}


@dataclass(frozen=True)
class VariantSource:
    source: Path
    defines: tuple[str, ...] = ()


SOURCES = {
    "production": VariantSource(BPF_DIR / "sockredir.bpf.c"),
    "netns": VariantSource(BPF_DIR / "sockredir.bpf.c", ("SOCKREDIR_NETNS",)),
    "guarded": VariantSource(BPF_DIR / "sockredir.bpf.c", ("SOCKREDIR_GUARD",)),
    "seed": VariantSource(BPF_DIR / "seed" / "sockredir_seed.bpf.c"),
    "passthrough": VariantSource(BPF_DIR / "sockredir.bpf.c", ("SOCKREDIR_WATCH",)),
    "verdict": VariantSource(BPF_DIR / "sockredir.bpf.c", ("SOCKREDIR_WATCH", "SOCKREDIR_SKB_VERDICT")),
}


@dataclass
class Installation:
    cgroup: str
    variant: str
    requested: str
    pin_dir: str
    programs: dict[str, Program] = field(default_factory=dict)
    maps: dict[str, int] = field(default_factory=dict)
    fallback_reason: str | None = None
    max_entries: int | None = None
    read_hook: str | None = None

    @property
    def prog_ids(self) -> dict[str, int]:
        return {name: prog.id for name, prog in self.programs.items()}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- where pins live

def cgroup_slug(cgroup: str, mount: str) -> str:
    """A pin directory name for a cgroup: readable, and unique (hash of the relative path)."""
    relative = posixpath.relpath(cgroup, mount)
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", relative)[-60:]
    digest = hashlib.sha256(relative.encode()).hexdigest()[:8]
    return f"cg-{readable}-{digest}"


def existing_pin_dirs(target: Target, cgroup: str) -> list[str]:
    slug = cgroup_slug(cgroup, cgroups.cgroup2_mount(target))
    found = []
    for mount in bpffs_mounts(target):
        candidate = posixpath.join(mount, PIN_PARENT, slug)
        if target.is_dir(candidate):
            found.append(candidate)
    return found


def new_pin_dir(target: Target, cgroup: str) -> str:
    slug = cgroup_slug(cgroup, cgroups.cgroup2_mount(target))
    return posixpath.join(ensure_bpffs(target), PIN_PARENT, slug)


# ----------------------------------------------------------------------------- load

def build_object(variant: str, max_entries: int | None = None, extra: tuple[str, ...] = ()) -> Path:
    spec = SOURCES[variant]
    defines = [*spec.defines, *extra]
    if max_entries is not None:
        if max_entries < 1:
            raise LabError(f"max_entries must be at least 1, not {max_entries}")
        defines.append(f"SOCKREDIR_MAX_ENTRIES={int(max_entries)}")
    return bpf_build.build(spec.source, defines)


def _chosen(programs: dict[str, Program], prog_type: str, name: str | None,
            pin_dir: str) -> tuple[str, Program]:
    of_type = {n: p for n, p in programs.items() if p.type == prog_type}
    if name is None:
        return _one(of_type, f"{prog_type} program", pin_dir)
    if name not in of_type:
        raise LabError(f"no {prog_type} program named {name!r} in the object (its {prog_type} "
                       f"programs: {sorted(of_type) or 'none'})")
    return name, of_type[name]


def _one(items: dict, kind: str, pin_dir: str) -> tuple[str, Any]:
    if len(items) != 1:
        raise LabError(f"expected one {kind} pinned under {pin_dir}, found {sorted(items)}; "
                       "the object does not look like a socket redirect (name the one to use: "
                       "--sockops, --skmsg, --map)")
    return next(iter(items.items()))


SOCK_MAP_TYPES = ("sockhash", "sockmap")


def attach(target: Target, cgroup: str, pin_dir: str, programs: dict[str, Program],
           sockops_name: str | None = None, skmsg_name: str | None = None,
           map_name: str | None = None) -> dict[str, int]:
    """Attach the object's sk_msg program to its socket map and its sock_ops program to
    ``cgroup``. Names choose among several of a kind (an object the lab did not write); by
    default there must be exactly one sock_ops and one sk_msg program, and the map is the one
    socket map (SOCKHASH or SOCKMAP) of the object."""
    maps = pinned_maps(target, pin_dir)
    _, sockops = _chosen(programs, "sock_ops", sockops_name, pin_dir)
    _, skmsg = _chosen(programs, "sk_msg", skmsg_name, pin_dir)
    socket_maps = {n: m for n, m in maps.items() if m["type"] in SOCK_MAP_TYPES}
    if map_name is not None:
        if map_name not in socket_maps:
            raise LabError(f"no SOCKHASH or SOCKMAP named {map_name!r} pinned under {pin_dir} "
                           f"(the object's socket maps: {sorted(socket_maps) or 'none'})")
        sockhash = map_name
    else:
        sockhash, _ = _one(socket_maps, "SOCKHASH or SOCKMAP", pin_dir)
    # Verdicts first: a socket the sockops program inserts is redirected from its first sendmsg().
    map_pin = f"{pin_dir}/maps/{sockhash}"
    for prog in programs.values():
        if prog.type == "sk_skb":  # the watching `verdict` shape: before any socket joins the map
            links.to_map(target, prog.pin, links.MAP_ATTACH_TYPES["sk_skb"], map_pin)
    links.to_map(target, skmsg.pin, links.MAP_ATTACH_TYPES["sk_msg"], map_pin)
    links.to_cgroup(target, cgroup, "sock_ops", sockops.pin)
    return {name: info["id"] for name, info in maps.items()}


# ----------------------------------------------------------------------------- variant choice

def sockmap_missing(target: Target) -> str | None:
    """Why the redirect cannot work on this kernel, or None (probed with bpftool)."""
    program_types = target.features.get("program_types", {})
    map_types = target.features.get("map_types", {})
    wanted = {"sock_ops programs": program_types.get("have_sock_ops_prog_type"),
              "sk_msg programs": program_types.get("have_sk_msg_prog_type"),
              "SOCKHASH maps": map_types.get("have_sockhash_map_type")}
    missing = [name for name, have in wanted.items() if not have]
    return f"{target.name} ({target.kernel_release}) lacks {', '.join(missing)}" if missing else None


def netns_supported(target: Target) -> bool:
    return (target.has_helper("sock_ops", "bpf_get_netns_cookie")
            and target.has_helper("sk_msg", "bpf_get_netns_cookie"))


def choose_variant(target: Target, requested: str) -> tuple[str, str | None]:
    if requested not in VARIANTS:
        raise LabError(f"unknown variant {requested!r}; choose one of {', '.join(VARIANTS)}")
    if requested != "auto":
        return requested, None
    if netns_supported(target):
        return "netns", None
    return "production", ("bpf_get_netns_cookie is not available to both sock_ops and sk_msg "
                          f"programs on {target.kernel_release} (bpftool feature probe)")


# ----------------------------------------------------------------------------- public API

def install(target: Target, cgroup: str, variant: str = "production",
            max_entries: int | None = None, port_policy=None) -> Installation:
    """Load, pin and attach the redirect to ``cgroup`` (an existing, non-root cgroup v2).

    ``port_policy`` (a ``lab.bpf.policy.PortPolicy``) is set before the programs are attached, so
    no connection is taken against it."""
    cgroup = cgroups.resolve(target, cgroup)
    if existing_pin_dirs(target, cgroup) or foreign_attachments(target, cgroup):
        raise LabError(f"the redirect is already installed on {cgroup} (or left over); run "
                       f"`sockredir-lab redirect uninstall --cgroup {cgroup}` first")
    chosen, reason = choose_variant(target, variant)

    def install_built(built: str, extra: tuple[str, ...] = (),
                      attach_first: Callable[[str], None] | None = None) -> Installation:
        def before_attach(pin_dir: str) -> None:
            if attach_first is not None:
                attach_first(pin_dir)
            if port_policy is not None:
                policy.require_policy_maps(target, pin_dir, built)
                policy.apply(target, pin_dir, port_policy)
        return install_object(target, cgroup, build_object(built, max_entries, extra), built,
                              requested=variant, before_attach=before_attach)
    if chosen == "guarded":
        installed, reason = _install_guarded(target, install_built)
        if installed is not None:
            return replace(installed, max_entries=max_entries)
        chosen = "netns" if netns_supported(target) else "production"
    try:
        installed = install_built(chosen)
    except VerifierRejected as exc:
        if chosen != "netns":
            raise
        # An explicit netns request on a kernel without the helper: keep the verifier's word.
        reason = f"netns variant rejected by the verifier: {exc.key_line}"
        installed = install_built("production")
    return replace(installed, fallback_reason=reason, max_entries=max_entries)


def _install_guarded(target: Target, install_built: Callable[..., Installation]
                     ) -> tuple[Installation | None, str | None]:
    """The guarded variant with the first read hook the kernel loads and attaches (READ_HOOKS),
    keyed with the netns cookie where the kernel offers it; else (None, why not, per form)."""
    netns = ("SOCKREDIR_NETNS",) if netns_supported(target) else ()
    refusals = []
    for hook in READ_HOOKS:
        def attach_hook(pin_dir: str, hook: ReadHook = hook) -> None:
            # Before the sock_ops program: a read the hook does not see leaves the guard's count
            # of unread bytes too high, which only keeps a connection on TCP longer.
            links.attach(target, hook.program, f"{pin_dir}/progs/{hook.program}", hook.link_kind,
                         hook.point, f"{pin_dir}/links/{hook.program}")
        try:
            installed = install_built("guarded", (f"SOCKREDIR_READER={hook.define}", *netns), attach_hook)
        except (LoadError, links.LinkRefused) as exc:
            why = exc.key_line if isinstance(exc, LoadError) else exc.reason
            refusals.append(f"{hook.form} ({hook.needs}): {why}")
            continue
        return replace(installed, read_hook=hook.form), None
    return None, (f"the guard has no read hook on {target.name} ({target.kernel_release}): "
                  + "; ".join(refusals))


def install_object(target: Target, cgroup: str, obj: Path, variant: str, requested: str | None = None,
                   names: tuple[str | None, str | None, str | None] = (None, None, None),
                   before_attach: Callable[[str], None] | None = None) -> Installation:
    """The one install path of every program the lab loads (its variants, a mutant's build, a
    user's object): a fresh pin directory for ``cgroup``, load and pin ``obj``, ``before_attach``
    (pin_dir) while nothing is attached yet, then attach; on any error everything of it is
    detached and unpinned again. ``names``: the sock_ops program, the sk_msg program and the socket
    map, where the object has several of a kind."""
    pin_dir = new_pin_dir(target, cgroup)
    try:
        programs = load(target, obj, pin_dir)
        if before_attach is not None:
            before_attach(pin_dir)
        maps = attach(target, cgroup, pin_dir, programs, *names)
    except BaseException:
        uninstall(target, cgroup)
        raise
    return Installation(cgroup, variant, requested or variant, pin_dir, programs, maps)


def foreign_attachments(target: Target, cgroup: str) -> list[dict]:
    """Our sockops programs attached to ``cgroup`` (recognised by name), pinned or not."""
    return [entry for entry in attached_sockops(target, cgroup) if entry.get("name") in SOCKOPS_PROGRAMS]


def attached_sockops(target: Target, cgroup: str) -> list[dict]:
    if not target.is_dir(cgroup):
        return []
    result = target.run(["bpftool", "-j", "cgroup", "show", cgroup])
    if not result.ok:
        # bpftool 7.1 on kernels before 6.0 fails the plain query once a program is attached (it
        # asks for per-program attach flags those kernels do not know); the effective query works
        # there, and for a lab cgroup (nothing attached above it) lists the same programs.
        result = target.run(["bpftool", "-j", "cgroup", "show", cgroup, "effective"], check=True)
    entries = json.loads(result.stdout) if result.stdout.strip() else []
    return [e for e in entries if e.get("attach_type") in ("sock_ops", "cgroup_sock_ops")]


# The attach types (bpftool's words) of the programs the lab attaches to a socket map.
@dataclass(frozen=True)
class Step:
    """One command of an uninstall: what it does, in words, and the argv that does it."""
    what: str
    argv: list[str]
    required: bool = True   # a detach of a verdict that is already gone may fail harmlessly


def uninstall_plan(target: Target, cgroup: str) -> list[Step]:
    """The commands that detach and unpin everything of the redirect on ``cgroup`` (also after a
    partial install), in order: sk_msg from its socket map, sock_ops from the cgroup by id, the
    pins; then our sock_ops programs left attached without pins. ``uninstall`` runs them; the
    detach scenario has its client run the same list midway through a stream."""
    cgroup = _normalise(target, cgroup)
    steps = []
    # One listing of the cgroup serves every pin directory and the leftovers (a TCG guest spends
    # ~0.1 s per bpftool run).
    attached = {entry["id"]: entry for entry in attached_sockops(target, cgroup)}
    for pin_dir in existing_pin_dirs(target, cgroup):
        programs, maps = pinned(target, pin_dir)
        for prog in programs.values():
            kind = links.MAP_ATTACH_TYPES.get(prog.type)
            if kind is None:
                continue
            for name, info in maps.items():
                if info["type"] in SOCK_MAP_TYPES:
                    steps.append(Step(f"detached {prog.name} from {name}",
                                      links.map_detach(prog.pin, kind, f"{pin_dir}/maps/{name}"), required=False))
        for prog in programs.values():
            entry = attached.pop(prog.id, None)
            if entry is not None:
                steps.append(Step(f"detached {entry['name']} (id {entry['id']}) from {cgroup}",
                                  _detach_sockops(cgroup, entry)))
        # bpffs supports unlink and rmdir; removing the last pin of a map or program frees it once
        # no attachment holds it (the sockhash drops its verdict program when its last user ref goes).
        steps.append(Step(f"removed pins {pin_dir}", ["rm", "-rf", pin_dir]))
    # Left over from an install whose pins are gone: our programs, recognised by name.
    for entry in attached.values():
        if entry.get("name") in SOCKOPS_PROGRAMS:
            steps.append(Step(f"detached unpinned {entry['name']} (id {entry['id']}) from {cgroup}",
                              _detach_sockops(cgroup, entry)))
    return steps


def uninstall(target: Target, cgroup: str) -> list[str]:
    """Detach and unpin everything of the redirect on ``cgroup``; also after a partial install.

    Returns what was done, one line per action.
    """
    done = []
    for step in uninstall_plan(target, cgroup):
        if target.run(step.argv, check=step.required).ok:
            done.append(step.what)
    for mount in bpffs_mounts(target):
        target.remove_dir(posixpath.join(mount, PIN_PARENT))  # only when empty: others may use it
    return done


def _detach_sockops(cgroup: str, entry: dict) -> list[str]:
    return ["bpftool", "cgroup", "detach", cgroup, "sock_ops", "id", str(entry["id"])]


def _normalise(target: Target, cgroup: str) -> str:
    mount = cgroups.cgroup2_mount(target)
    absolute = posixpath.normpath(cgroup if cgroup.startswith("/") else posixpath.join(mount, cgroup))
    if absolute == mount or not absolute.startswith(mount.rstrip("/") + "/"):
        raise LabError(f"{cgroup} is not a cgroup below the cgroup2 mount {mount}; the redirect is "
                       "never installed on the root cgroup")
    return absolute


def installed(target: Target, cgroup: str) -> tuple[str, str, dict[str, Program], dict[str, dict]]:
    """The installation on ``cgroup``: (variant, pin dir, programs, maps)."""
    cgroup = _normalise(target, cgroup)
    pin_dirs = existing_pin_dirs(target, cgroup)
    if not pin_dirs:
        raise LabError(f"the redirect is not installed on {cgroup}; install it with "
                       f"`sockredir-lab redirect install --cgroup {cgroup}`")
    pin_dir = pin_dirs[0]
    programs, maps = pinned(target, pin_dir)
    variant = next((SOCKOPS_PROGRAMS[n] for n in programs if n in SOCKOPS_PROGRAMS), "unknown")
    return variant, pin_dir, programs, maps


def status(target: Target, cgroup: str) -> dict[str, Any]:
    """Decoded map entries and summed counters of the installation on ``cgroup``."""
    cgroup = _normalise(target, cgroup)
    variant, pin_dir, programs, maps = installed(target, cgroup)
    read = [name for name, info in maps.items() if info["type"] in ("sockhash", "percpu_array")]
    if policy.POLICY_MAP in maps:
        read += [policy.POLICY_MAP, policy.PORTS_MAP]
    dumps = dict(zip(read, bpftool_batch(target, [["map", "dump", "pinned", f"{pin_dir}/maps/{name}"]
                                                  for name in read])))
    entries: list[dict] = []
    counters: dict[str, int] = {}
    guard: dict[str, int] | None = None
    watch: dict[str, int] | None = None
    for name in read:
        if maps[name]["type"] == "sockhash":
            entries += keys.decode_sockhash_dump(dumps[name])
        elif name == GUARD_COUNTERS_MAP:
            guard = keys.decode_counters(dumps[name], keys.GUARD_FIELDS)
        elif name == WATCH_COUNTERS_MAP:
            watch = keys.decode_counters(dumps[name], keys.WATCH_FIELDS)
        elif maps[name]["type"] == "percpu_array":
            counters = keys.decode_counters(dumps[name])
    attached_ids = {e["id"] for e in attached_sockops(target, cgroup)}
    port_policy = (policy.decode(dumps[policy.POLICY_MAP], dumps[policy.PORTS_MAP], pin_dir).as_dict()
                   if policy.POLICY_MAP in maps else None)
    return {
        "cgroup": cgroup,
        "variant": variant,
        "pin_dir": pin_dir,
        "attached": any(p.id in attached_ids for p in programs.values()),
        "programs": {n: asdict(p) for n, p in programs.items()},
        "entries": entries,
        "counters": counters,
        "guard": guard,
        "watch": watch,
        "read_hook": next((READ_HOOK_PROGRAMS[n] for n in programs if n in READ_HOOK_PROGRAMS), None),
        "policy": port_policy,
    }


def policy_pin_dir(target: Target, cgroup: str) -> str:
    """The pin directory of the redirect installed on ``cgroup``, if its variant has a policy."""
    variant, pin_dir, _, _ = installed(target, cgroup)
    policy.require_policy_maps(target, pin_dir, variant)
    return pin_dir
