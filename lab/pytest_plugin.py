"""The lab's pytest plugin: kernel parametrisation, one guest per kernel, artifacts, feature gates.

A test that takes the ``kernel`` fixture (directly or through ``guest``/``target``) runs once per
catalogued kernel, with ids ``kernel_5_10``, ``kernel_6_1``, ... Tests of one kernel share a guest
for the session; pytest orders the tests by kernel and tears a guest down before it boots the next,
so one guest runs at a time. A kernel that is unavailable skips with its reason; a broken catalog
entry or a guest that fails to boot errors the tests of that kernel only, and the run goes on; a
guest that dies fails that kernel's remaining tests with its console tail.

Installed into any environment, the plugin stays out of the way of runs that do not use its
fixtures: the catalog is read only when a test asks for a kernel, and a problem with the lab's
settings (catalog file, ``--kernel``, ``--kernel-source``) is a one-line usage error (exit 4) only
for runs that select kernel tests. Errors the lab reports (``LabError``) are shown as their message,
not as a Python traceback. Guests are booted through ``lab.api``, like everything else.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from lab import HOST, LabError, api, pytest_events
from lab.kernel.catalog import TEST_ID_RE, Catalog, CatalogError, KernelEntry, test_id_of
from lab.vm import dmesg as dmesg_mod

KERNEL_ID_RE = re.compile(rf"\b{TEST_ID_RE.pattern}\b", re.IGNORECASE)
CONSOLE_TAIL_LINES = 40
LAB_KEY = pytest.StashKey["Lab"]()
RUN_NAME_KEY = "sockredir_run_name"


@dataclass(frozen=True)
class HostKernel:
    """The host kernel as one more column of the matrix (``kernel_host``): root only, and every
    test on it runs in a dedicated cgroup and network namespace."""

    id: str = HOST
    test_id: str = test_id_of(HOST)

    @property
    def release(self) -> str:
        return os.uname().release


class SettingsProblem(LabError):
    """The lab's settings cannot be used (catalog file, --kernel, --kernel-source)."""


@dataclass
class Lab:
    """What the plugin keeps for the session."""

    config: pytest.Config
    settings: api.Settings
    artifacts: Path
    guests: dict = field(default_factory=dict)
    configs: dict = field(default_factory=dict)  # kernel id -> its KernelConfig (or None), read once
    problem: str | None = None  # a settings problem, reported only if kernel tests are selected
    splats_allowed_file: Path = dmesg_mod.ALLOWED_PATH
    _allowed_splats: list | None = None

    @property
    def allowed_splats(self) -> list:
        """The splat allow-list, read at the first guest test's end (a bad file fails that test)."""
        if self._allowed_splats is None:
            self._allowed_splats = dmesg_mod.load_allowed(self.splats_allowed_file)
        return self._allowed_splats

    @property
    def catalog(self) -> Catalog:
        try:
            return self.settings.catalog()
        except LabError as exc:
            raise SettingsProblem(str(exc)) from None

    def progress(self, message: str) -> None:
        # Fixtures' output is captured; long work (downloads, image build, boot) is shown anyway.
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"[sockredir-lab] {message}")
        else:
            print(f"[sockredir-lab] {message}", file=sys.stderr)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sockredir-lab")
    group.addoption("--kernel", action="append", default=[], metavar="ID",
                    help="run only these kernel ids (repeatable); default: every catalogued kernel")
    group.addoption("--kernel-source", action="append", default=[], metavar="ID=PATH_OR_URL",
                    help="take kernel ID from a .deb / vmlinuz path or URL (adds or replaces it)")
    group.addoption("--kernels-toml", default=None, metavar="PATH",
                    help="your own kernel catalog instead of the lab's (ini: sockredir_kernels)")
    group.addoption("--image-package", action="append", default=[], metavar="PACKAGE",
                    help="a Debian package to add to the guest image (repeatable; ini: "
                         "sockredir_image_packages)")
    group.addoption("--accel", choices=("auto", "kvm", "tcg"), default=None,
                    help="force QEMU's accelerator (default: probe KVM by booting, else TCG)")
    group.addoption("--fresh-guest", choices=("session", "module"), default="session",
                    help="how long a guest serves a kernel's tests: the whole session (default) "
                         "or one test module; a test marked fresh_guest always gets its own")
    group.addoption("--cold-boot", action="store_true",
                    help="boot every guest from scratch instead of restoring the snapshot saved at "
                         "a kernel's first boot (lab/vm/snapshot.py)")
    group.addoption("--guest-cpus", type=int, default=None, metavar="N",
                    help="vCPUs of each guest (default: 2, or each guest's share of this machine's "
                         "CPUs when pytest-xdist workers run guests side by side; lab/vm/capacity.py)")
    group.addoption("--artifacts", default=None, metavar="DIR",
                    help="where per-test artifacts go (default: artifacts/<run name>)")
    group.addoption("--no-host", action="store_true",
                    help="leave the host kernel (kernel_host) out of the matrix")
    group.addoption("--run-name", default=None,
                    help="name of this run's artifact directory (default: date-time-pid)")
    group.addoption("--bcc-all", action="store_true",
                    help="run the bcc tests (run-time compile, slow under TCG) on every kernel, "
                         "not only the default one (tests/integration/test_bcc.py)")
    group.addoption("--conformance-all", action="store_true",
                    help="run the conformance matrix on every kernel, not only the host and the "
                         "default guest (tests/integration/test_conformance.py)")
    group.addoption("--redirect-program", default=None, metavar="FILE.bpf.c|FILE.o",
                    help="judge this redirect (sock_ops + sk_msg + SOCKHASH/SOCKMAP) instead of the "
                         "lab's in the scenario and conformance tests (tests/integration/"
                         "test_scenarios.py, test_conformance.py)")
    group.addoption("--redirect-program-families", default="ipv4", metavar="ipv4[,ipv6]",
                    help="what --redirect-program redirects (default ipv4)")
    group.addoption("--checks-all", action="store_true",
                    help="test the checks themselves on every kernel, not only on the host: every "
                         "mutant of the redirect, and the example programs judged with --program "
                         "(tests/integration/test_mutants.py, test_judge_program.py); and restored "
                         "guests' randomness (test_snapshots.py; default: 5.10 and 6.1)")
    group.addoption("--foreign-kernels", action="store_true",
                    help="boot Debian kernels of other flavours and versions than the catalog's "
                         "(generic 5.10, 6.12, 7.2 from split packages) through the smoke and "
                         "redirect tests, not only the generic 6.1 (tests/integration/"
                         "test_foreign_kernels.py)")
    group.addoption("--kernel-build", action="store_true",
                    help="build linux-source-6.1 with `kernels build` (about 30 minutes on 2 cores, "
                         "cached after) and run the smoke and redirect tests on it "
                         "(tests/integration/test_kernel_from_source.py)")
    group.addoption("--kernel-fixes", action="store_true",
                    help="prove kernel-fixes/: build Debian's linux-source-6.12 stock and with the "
                         "patches (about 20 minutes each on 2 cores, cached after), compare their "
                         "conformance matrices and run the reproducers, scenarios and mutants on both "
                         "(tests/integration/test_kernel_fix_proof.py)")
    group.addoption("--bench-all", action="store_true",
                    help="run the redirect bench's sanity test (tests/integration/test_bench.py) "
                         "and the real peers (test_bench_peers.py) on every kernel, not only the "
                         "host and the default guest (the peers: the host)")
    group.addoption("--progress-fd", type=int, default=None, metavar="N",
                    help="write the run's progress as JSON lines to file descriptor N (typed events "
                         "for a program that follows the run: sockredir-lab matrix; lab/matrix/events.py)")
    group.addoption("--splats-allowed", default=None, metavar="FILE",
                    help="kernel splats accepted per kernel (TOML; ini: sockredir_splats_allowed; "
                         "default: the lab's images/splats-allowed.toml)")
    parser.addini("sockredir_splats_allowed", "path of a splat allow-list (TOML), relative to the "
                  "ini file", type="paths", default=[])
    parser.addini("sockredir_kernels", "path of a kernel catalog (kernels.toml) to use instead of the "
                  "lab's, relative to the ini file", type="paths", default=[])
    parser.addini("sockredir_image_packages", "Debian packages added to the guest image",
                  type="linelist", default=[])


def pytest_configure(config: pytest.Config) -> None:
    for line in ("requires_helper(prog_type, helper): skip unless the kernel has the BPF helper "
                 "for that program type (from bpftool feature probe)",
                 "requires_map_type(name): skip unless the kernel has that BPF map type",
                 "requires_kernel_config(*capabilities): skip, before booting, unless the kernel's "
                 "configuration has these capabilities (lab.kernel.config: sockmap, btf, kprobes...)",
                 "fresh_guest(cpus=N): the test gets a guest of its own (restored from the kernel's "
                 "snapshot in about a second), not the one its kernel's other tests share; cpus: its "
                 "vCPUs (default: the run's, --guest-cpus)"):
        config.addinivalue_line("markers", line)
    run_name = _run_name(config)
    artifacts = Path(config.option.artifacts or config.rootpath / "artifacts" / run_name)
    lab = Lab(config, api.Settings(), artifacts)
    lab.settings.progress = lab.progress
    lab.settings.accel = config.option.accel
    lab.settings.cold_boot = config.option.cold_boot
    if config.option.guest_cpus is not None and config.option.guest_cpus < 1:
        lab.problem = f"--guest-cpus {config.option.guest_cpus}: a guest needs at least one vCPU"
    lab.settings.image_packages = tuple(config.option.image_package
                                        or config.getini("sockredir_image_packages"))
    ini_catalog = config.getini("sockredir_kernels")
    lab.settings.kernels_toml = (Path(config.option.kernels_toml) if config.option.kernels_toml
                                 else (ini_catalog[0] if ini_catalog else None))
    for spec in config.option.kernel_source:
        kernel_id, sep, value = spec.partition("=")
        if not sep or not value:
            lab.problem = f"--kernel-source {spec!r}: expected ID=PATH_OR_URL"
        lab.settings.kernel_sources[kernel_id] = value
    ini_splats = config.getini("sockredir_splats_allowed")
    if config.option.splats_allowed or ini_splats:
        lab.splats_allowed_file = Path(config.option.splats_allowed or ini_splats[0])
    config.stash[LAB_KEY] = lab
    pytest_events.register(config)


def _run_name(config: pytest.Config) -> str:
    """This run's name: given, or date-time-pid. pytest-xdist workers take their controller's, so
    a parallel run writes one artifact tree."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput and RUN_NAME_KEY in workerinput:
        return workerinput[RUN_NAME_KEY]
    return config.option.run_name or time.strftime("%Y%m%d-%H%M%S-") + str(os.getpid())


def _guest_cpus(config: pytest.Config, items: list[pytest.Item]) -> int:
    """--guest-cpus, else each guest's share of this machine's CPUs: as many guests run at once as
    there are pytest-xdist workers, or selected guest kernels if those are fewer."""
    from lab.vm import capacity

    if config.option.guest_cpus is not None:
        return config.option.guest_cpus
    workers = getattr(config, "workerinput", {}).get("workercount", 1)
    kernels = {param.id for param in map(_kernel_param, items)
               if param is not _NO_KERNEL and param is not None and not isinstance(param, HostKernel)}
    return capacity.this_machine().guest_cpus(min(workers, len(kernels)))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """pytest-xdist, on the controller: hand each worker the run's name (see _run_name)."""
    lab = node.config.stash.get(LAB_KEY, None)
    if lab is not None:
        node.workerinput[RUN_NAME_KEY] = lab.artifacts.name


def _host_in_matrix(lab: Lab) -> bool:
    """The host joins the matrix unless --no-host, or --kernel picked kernels without "host"."""
    wanted = lab.config.option.kernel
    return not lab.config.option.no_host and (not wanted or HOST in wanted)


def _selected(lab: Lab) -> list[KernelEntry | CatalogError]:
    """The catalog's entries the run asks for (SettingsProblem when that cannot be known)."""
    catalog = lab.catalog
    wanted = [k for k in lab.config.option.kernel if k != HOST]
    entries: list[KernelEntry | CatalogError] = list(catalog.entries) + list(catalog.errors)
    if not lab.config.option.kernel:
        return entries
    unknown = [k for k in wanted if not catalog.find(k) and not any(e.entry_id == k for e in catalog.errors)]
    if unknown:
        raise SettingsProblem(f"--kernel {', '.join(unknown)}: not in the catalog {catalog.path} "
                              f"(known: {', '.join(catalog.ids + ['host'])})")
    return [e for e in entries if (e.id if isinstance(e, KernelEntry) else e.entry_id) in wanted]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kernel" not in metafunc.fixturenames:
        return
    lab = metafunc.config.stash[LAB_KEY]
    try:
        if lab.problem:
            raise SettingsProblem(lab.problem)
        params = [pytest.param(entry, id=entry.test_id) for entry in _selected(lab)]
    except SettingsProblem as exc:
        # Reported as a usage error once collection shows that kernel tests were selected.
        lab.problem = str(exc)
        params = [pytest.param(None, id="kernel_settings_problem")]
    if _host_in_matrix(lab) and "guest" not in metafunc.fixturenames:
        params.append(pytest.param(HostKernel(), id=HostKernel.test_id))
    metafunc.parametrize("kernel", params, indirect=True, scope="session")


def pytest_collection_finish(session: pytest.Session) -> None:
    """After every selection (-k, -m): if kernel tests remain and the settings are unusable, stop
    with a usage error; runs without kernel tests never hear of it."""
    lab = session.config.stash.get(LAB_KEY, None)
    if lab is None:
        return
    if lab.problem and any(_kernel_param(item) is not _NO_KERNEL for item in session.items):
        raise pytest.UsageError(f"sockredir-lab: {lab.problem}")
    lab.settings.guest_cpus = _guest_cpus(session.config, session.items)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """pytest-xdist (``-n N``): one kernel's tests on one worker (lab/pytest_xdist.py), for the
    default ``load`` distribution and ``loadgroup``; other modes are left as asked."""
    if config.getoption("dist") not in ("load", "loadgroup"):
        return None
    from lab.pytest_xdist import KernelScheduling

    return KernelScheduling(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Make kernel ids in ``-k`` match whole ids: ``-k kernel_6_1`` must not select kernel_6_12.

    pytest's ``-k`` matches substrings and the kernel ids are prefixes of each other. When the
    expression names a kernel id, this hook runs the selection itself (before pytest's own), with
    kernel ids compared exactly and every other word matched as pytest does, then clears the
    expression so pytest does not select a second time.
    """
    expression = config.option.keyword
    if not expression or not KERNEL_ID_RE.search(expression):
        return
    try:
        from _pytest.mark import KeywordMatcher
        from _pytest.mark.expression import Expression
    except ImportError:  # pragma: no cover - pytest moved them; substring matching remains
        return
    compiled = Expression.compile(expression)
    kept, dropped = [], []
    for item in items:
        (kept if compiled.evaluate(_kernel_aware_matcher(item, KeywordMatcher)) else dropped).append(item)
    config.option.keyword = ""
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def _kernel_aware_matcher(item: pytest.Item, keyword_matcher):
    pytest_matcher = keyword_matcher.from_item(item)
    kernel_id = _kernel_test_id(item)

    def matches(word: str, *args, **kwargs) -> bool:
        if KERNEL_ID_RE.fullmatch(word):
            return word.lower() == kernel_id
        return pytest_matcher(word, *args, **kwargs)

    return matches


_NO_KERNEL = object()


def _kernel_param(item: pytest.Item):
    callspec = getattr(item, "callspec", None)
    if callspec is None or "kernel" not in callspec.params:
        return _NO_KERNEL
    param = callspec.params["kernel"]
    # A test left without kernels (a guest-only test under `--kernel host`) holds pytest's
    # placeholder for an empty parameter set; pytest skips it, and it is no kernel's test.
    if param is not None and not hasattr(param, "test_id"):
        return _NO_KERNEL
    return param


def _kernel_test_id(item: pytest.Item) -> str | None:
    param = _kernel_param(item)
    return None if param is _NO_KERNEL or param is None else param.test_id.lower()


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def lab(pytestconfig: pytest.Config) -> Lab:
    return pytestconfig.stash[LAB_KEY]


@pytest.fixture(scope="session")
def kernel(request: pytest.FixtureRequest, lab: Lab):
    """The kernel's artifacts (fetched and cached); skips when its source is not provided."""
    from lab.kernel.fetch import KernelUnavailable

    param = request.param
    if isinstance(param, HostKernel):
        return param
    if param is None:  # only reachable if the usage error above did not stop the run
        pytest.fail(f"sockredir-lab: {lab.problem}", pytrace=False)
    if isinstance(param, CatalogError):
        pytest.fail(f"broken catalog entry: {param}", pytrace=False)
    try:
        return api.prepare_kernel(param, lab.settings)
    except KernelUnavailable as exc:
        pytest.skip(str(exc))
    except LabError as exc:
        pytest.fail(f"kernel {param.id}: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def guest_image(lab: Lab):
    try:
        return api.guest_image(lab.settings)
    except LabError as exc:
        pytest.fail(f"guest image: {exc}", pytrace=False)


def _guest_scope(fixture_name: str, config: pytest.Config) -> str:
    return config.getoption("fresh_guest")


@pytest.fixture(scope=_guest_scope)
def guest(kernel, guest_image, lab: Lab, request: pytest.FixtureRequest):
    """A booted guest of this kernel, shared by the kernel's tests for the session (or for each
    module, with --fresh-guest=module)."""
    if isinstance(kernel, HostKernel):
        pytest.fail("the guest fixture has no host variant", pytrace=False)
    workdir = lab.artifacts / "guests" / kernel.id
    if request.scope == "module":
        workdir = workdir / request.module.__name__.rpartition(".")[2]
    yield from _booted_guest(kernel, guest_image, lab, workdir)


@pytest.fixture
def own_guest(kernel, guest_image, lab: Lab, request: pytest.FixtureRequest):
    """A guest of this test's own (tests marked ``fresh_guest``), in its artifact directory."""
    cpus = request.node.get_closest_marker("fresh_guest").kwargs.get("cpus")
    settings = replace(lab.settings, guest_cpus=cpus) if cpus else lab.settings
    yield from _booted_guest(kernel, guest_image, lab, artifact_dir(lab, request.node) / "guest", settings)


def _booted_guest(kernel, guest_image, lab: Lab, workdir: Path, settings: api.Settings | None = None):
    """Boot (or restore) a guest and register it as the kernel's current guest meanwhile (for the
    console tails in failure reports, and for giving up on a guest that stops answering)."""
    before = lab.guests.get(kernel.id)
    try:
        with api.guest(kernel, settings or lab.settings, workdir, image=guest_image) as booted:
            lab.guests[kernel.id] = booted
            yield booted
    except LabError as exc:
        pytest.fail(f"kernel {kernel.id}: {exc}", pytrace=False)
    finally:
        if before is None:
            lab.guests.pop(kernel.id, None)
        else:
            lab.guests[kernel.id] = before


@pytest.fixture(scope="session")
def host_target():
    """The host as a Target, when it can carry the redirect: root and sockmap support."""
    from lab.bpf import redirect

    try:
        host = api.host()
    except LabError as exc:
        pytest.skip(f"kernel_host: {exc}")
    missing = redirect.sockmap_missing(host)
    if missing:
        pytest.skip(f"host kernel {host.kernel_release} cannot carry the redirect: {missing}")
    return host


@pytest.fixture
def target(kernel, request: pytest.FixtureRequest, lab: Lab):
    """The kernel under test as a Target: the guest over SSH, or the host for kernel_host.

    After a guest test, the guest's dmesg is saved and scanned for kernel splats.
    """
    _apply_config_gates(request, kernel, lab)
    if isinstance(kernel, HostKernel):
        host = request.getfixturevalue("host_target")
        _apply_feature_gates(request, host)
        yield host
        return
    own = request.node.get_closest_marker("fresh_guest") is not None
    guest = request.getfixturevalue("own_guest" if own else "guest")
    if not guest.alive:
        pytest.fail(f"the guest of kernel {kernel.id} died earlier in this run ({guest.death()}); "
                    f"its remaining tests cannot run", pytrace=False)
    _apply_feature_gates(request, guest.target)
    yield guest.target
    _after_guest_test(request, guest, lab)


@pytest.fixture
def cgroup(target):
    """A fresh cgroup on the target for this test; any redirect on it is removed afterwards."""
    from lab.bpf import cgroups
    from lab.bpf import redirect

    with cgroups.dedicated(target) as path:
        try:
            yield path
        finally:
            redirect.uninstall(target, path)


def _apply_config_gates(request: pytest.FixtureRequest, kernel, lab: Lab) -> None:
    """Skip a test whose kernel's configuration lacks a capability it needs (no boot needed)."""
    from lab.kernel import config as kconfig

    needed = tuple(name for marker in request.node.iter_markers("requires_kernel_config")
                   for name in marker.args)
    if not needed:
        return
    if kernel.id not in lab.configs:
        lab.configs[kernel.id] = (kconfig.for_host(kernel.release) if isinstance(kernel, HostKernel)
                                  else kconfig.of_kernel(kernel))
    reason = kconfig.missing_reason(lab.configs[kernel.id], needed)
    if reason:
        pytest.skip(f"kernel {kernel.id}: {reason}; `sockredir-lab kernels check {kernel.id}`")


def _apply_feature_gates(request: pytest.FixtureRequest, target) -> None:
    for marker in request.node.iter_markers("requires_helper"):
        prog_type, helper = marker.args
        if not target.has_helper(prog_type, helper):
            pytest.skip(f"kernel {target.kernel_release} lacks {helper} for {prog_type} programs "
                        f"(bpftool feature probe)")
    for marker in request.node.iter_markers("requires_map_type"):
        (name,) = marker.args
        if not target.features.get("map_types", {}).get(f"have_{name}_map_type"):
            pytest.skip(f"kernel {target.kernel_release} lacks the {name} map type")


def _after_guest_test(request: pytest.FixtureRequest, guest, lab: Lab) -> None:
    outdir = artifact_dir(lab, request.node)
    (outdir / "console-tail.txt").write_text(guest.console_tail(200))
    if not guest.alive:
        pytest.fail(f"the guest of kernel {guest.kernel.id} died during this test ({guest.death()})",
                    pytrace=False)
    dmesg = guest.target.run(["dmesg", "-c"], timeout=30).stdout
    (outdir / "dmesg.txt").write_text(dmesg)
    found = dmesg_mod.scan(dmesg, guest.kernel.id, lab.allowed_splats)
    if found.accepted:
        accepted = "\n".join(f"{line}  [accepted: {why}]" for line, why in found.accepted)
        (outdir / "splats-accepted.txt").write_text(accepted + "\n")
        request.node.user_properties.append(("sockredir_accepted_splats", accepted))
    if found.splats:
        pytest.fail("kernel splat in dmesg during the test (see "
                    f"{outdir / 'dmesg.txt'}):\n" + "\n".join(found.splats[:20]), pytrace=False)


def artifact_path(lab: Lab, node: pytest.Item) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.\-\[\]]+", "_", node.nodeid)
    return lab.artifacts / "tests" / safe


def artifact_dir(lab: Lab, node: pytest.Item) -> Path:
    path = artifact_path(lab, node)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.hookimpl(tryfirst=True)  # before pytest's skip marks end the setup
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A kernel test's JUnit record names its kernel and its artifacts (``sockredir-lab report``
    reads them: catalog ids are not recoverable from test ids, and CI moves artifact trees)."""
    lab = item.config.stash.get(LAB_KEY, None)
    param = _kernel_param(item)
    if lab is None or param is _NO_KERNEL or param is None:
        return
    kernel_id = param.entry_id if isinstance(param, CatalogError) else param.id
    item.user_properties.append(("sockredir_kernel", kernel_id or param.test_id))
    item.user_properties.append(("sockredir_artifacts", str(artifact_path(lab, item))))


@pytest.fixture
def artifacts(request: pytest.FixtureRequest, lab: Lab) -> Path:
    """This test's artifact directory (map dumps, verifier logs, scenario JSON)."""
    return artifact_dir(lab, request.node)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    report = outcome.get_result()
    xpass = _xpass(report)
    if xpass:
        # JUnit has no XPASS (pytest writes a non-strict one as a pass, a strict one as a
        # failure): `sockredir-lab report` tells it by this property.
        item.user_properties.append(("sockredir_xpass", xpass))
    if report.passed or report.skipped:
        return
    if call.excinfo is not None and call.excinfo.errisinstance(LabError):
        # The one error boundary: what the lab reports is a message for the user, not a bug.
        report.longrepr = f"{type(call.excinfo.value).__name__}: {call.excinfo.value}"
    lab = item.config.stash.get(LAB_KEY, None)
    param = _kernel_param(item)
    if lab is None or param is _NO_KERNEL:
        return
    booted = lab.guests.get(getattr(param, "id", None))
    if booted is not None and call.excinfo is not None:
        booted.give_up_if_lost(call.excinfo.value)
    if booted is not None:
        report.sections.append((f"guest console of kernel {param.id} (last {CONSOLE_TAIL_LINES} "
                                f"lines; full log {booted.console_log})",
                                booted.console_tail(CONSOLE_TAIL_LINES)))


def _xpass(report) -> str | None:
    """"strict" or "non-strict" for a test marked xfail that passed (a listed kernel defect that
    did not show), else None."""
    if report.when != "call":
        return None
    if report.passed and hasattr(report, "wasxfail"):
        return "non-strict"
    if report.failed and str(report.longrepr).startswith("[XPASS(strict)]"):
        return "strict"
    return None


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    lab = config.stash.get(LAB_KEY, None)
    if lab is not None and lab.artifacts.exists():
        terminalreporter.write_line(f"sockredir-lab artifacts: {lab.artifacts}")
