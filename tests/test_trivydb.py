"""The bbolt writer (checked by an independent page walker), the offline Trivy DB (real Trivy scans it), its age."""

from __future__ import annotations

import importlib.util
import json
import re
import struct
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from devtools.trivydb import Advisory, BoltTree, read_bbolt, trivy_db_tree, write_bbolt, write_trivy_db
from sunday_release.config import ScanPolicy
from sunday_release.errors import GateFailed
from sunday_release.findings import check_db_fresh
from tests.conftest import FIXTURES, Registry
from tests.test_ci_flow import sunday

BASE_IMAGE = "localhost:5000/base/debian:bookworm"
PAGE = 4096


# --- an independent reader of the bbolt layout (etcd-io/bbolt internal/common/page.go, meta.go) ---


def fnv64a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) % 2**64
    return h


def meta(data: bytes, page: int) -> dict[str, int]:
    base = page * PAGE
    pid, flags = struct.unpack_from("<QH", data, base)
    fields = struct.unpack_from("<IIIIQQQQQQ", data, base + 16)
    names = ("magic", "version", "page_size", "flags", "root", "sequence", "freelist", "hwm", "txid", "checksum")
    out = dict(zip(names, fields, strict=True))
    out["page_id"], out["page_flags"] = pid, flags
    out["computed"] = fnv64a(data[base + 16 : base + 16 + 56])  # every meta field before the checksum
    return out


def walk(data: bytes, pgid: int, seen: dict[int, int], inline: bytes | None = None) -> list[bytes]:
    """Check one page subtree (ids, sorted keys, branch keys = first child key); return its keys."""
    buf, base = (inline, 0) if inline is not None else (data, pgid * PAGE)
    pid, flags, count, overflow = struct.unpack_from("<QHHI", buf, base)
    if inline is None:
        assert pid == pgid, f"page {pgid} says it is {pid}"
        assert pgid not in seen, f"page {pgid} referenced twice"
        seen[pgid] = overflow
    keys: list[bytes] = []
    for i in range(count):
        at = base + 16 + 16 * i
        if flags == 0x02:
            eflags, pos, ksize, vsize = struct.unpack_from("<IIII", buf, at)
            key = buf[at + pos : at + pos + ksize]
            if eflags & 1:
                value = buf[at + pos + ksize : at + pos + ksize + vsize]
                root, _ = struct.unpack_from("<QQ", value)
                walk(data, root, seen, value[16:] if root == 0 else None)
            keys.append(key)
        else:
            assert flags == 0x01, f"page {pgid}: unexpected flags {flags:#x}"
            pos, ksize, child = struct.unpack_from("<IIQ", buf, at)
            child_keys = walk(data, child, seen)
            assert buf[at + pos : at + pos + ksize] == child_keys[0]
            keys.extend(child_keys)
    assert keys == sorted(keys) and len(set(keys)) == len(keys), f"page {pgid}: keys not strictly sorted"
    return keys


def check_file(path: Path) -> dict[str, Any]:
    """Validate metas, freelist and the page tree; return facts about the file."""
    data = path.read_bytes()
    metas = [meta(data, 0), meta(data, 1)]
    for i, m in enumerate(metas):
        assert (m["page_id"], m["page_flags"], m["magic"], m["version"]) == (i, 0x04, 0xED0CDAED, 2)
        assert m["page_size"] == PAGE and m["checksum"] == m["computed"]
        assert len(data) == m["hwm"] * PAGE
    freelist = struct.unpack_from("<QHHI", data, metas[1]["freelist"] * PAGE)
    assert freelist == (2, 0x10, 0, 0)
    seen: dict[int, int] = {}
    root = metas[1]["root"]
    walk(data, root, seen)
    used = {0, 1, 2} | {p + k for p, n in seen.items() for k in range(n + 1)}
    assert used == set(range(metas[1]["hwm"])), "every page is used exactly once (no leaks)"
    root_flags = struct.unpack_from("<H", data, root * PAGE + 8)[0]
    return {"pages": len(seen), "overflow": sum(seen.values()), "root_flags": root_flags}


# --- unit: the bbolt writer ---


def test_fnv64a_matches_reference_vectors() -> None:
    assert fnv64a(b"") == 0xCBF29CE484222325
    assert fnv64a(b"a") == 0xAF63DC4C8601EC8C
    assert fnv64a(b"foobar") == 0x85944171F73967E8


def test_round_trip_nested_inline_and_empty_buckets(tmp_path: Path) -> None:
    tree: BoltTree = {
        b"b": {b"k2": b"v2", b"k1": b"", b"nested": {b"deep": {b"x": b"1"}}, b"empty": {}},
        b"a": {},
    }
    path = write_bbolt(tmp_path / "t.db", tree)
    facts = check_file(path)
    assert read_bbolt(path) == tree
    assert facts["root_flags"] == 0x02


def test_large_bucket_spans_leaves_under_branch_pages(tmp_path: Path) -> None:
    big = {f"key-{i:06d}".encode(): f"value-{i}".encode() * 3 for i in range(5000)}
    tree = {b"big": big, b"small": {b"only": b"one"}}
    path = write_bbolt(tmp_path / "big.db", tree)
    facts = check_file(path)
    assert facts["pages"] > 40  # ~200 KB of keys and values cannot fit a few pages
    got = read_bbolt(path)
    assert got[b"big"] == big and got[b"small"] == {b"only": b"one"}


def test_many_buckets_at_the_root_need_a_branch_root(tmp_path: Path) -> None:
    tree = {f"bucket-{i:05d}".encode(): {b"k": str(i).encode()} for i in range(400)}
    path = write_bbolt(tmp_path / "roots.db", tree)
    facts = check_file(path)
    assert facts["root_flags"] == 0x01
    assert read_bbolt(path) == tree


def test_oversized_value_uses_overflow_pages(tmp_path: Path) -> None:
    huge = bytes(range(256)) * 80  # 20 KiB: five pages
    tree = {b"b": {b"a": b"small", b"huge": huge, b"z": b"after"}}
    path = write_bbolt(tmp_path / "overflow.db", tree)
    facts = check_file(path)
    assert facts["overflow"] >= 4
    assert read_bbolt(path) == tree


def test_reader_falls_back_to_the_other_meta_and_rejects_garbage(tmp_path: Path) -> None:
    path = write_bbolt(tmp_path / "t.db", {b"b": {b"k": b"v"}})
    data = bytearray(path.read_bytes())
    data[PAGE + 16 + 56] ^= 0xFF  # break meta 1's checksum: meta 0 still opens
    path.write_bytes(bytes(data))
    assert read_bbolt(path) == {b"b": {b"k": b"v"}}
    data[16 + 56] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="no valid bbolt meta page"):
        read_bbolt(path)


def test_bad_trees_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must hold a bucket"):
        write_bbolt(tmp_path / "x.db", {b"k": b"v"})
    with pytest.raises(ValueError, match="keys must be"):
        write_bbolt(tmp_path / "x.db", {b"b": {b"": b"v"}})
    with pytest.raises(TypeError, match="must be bytes or a mapping"):
        write_bbolt(tmp_path / "x.db", {b"b": {b"k": "str"}})  # type: ignore[dict-item]


# --- unit: the Trivy layout ---

TAR = Advisory("CVE-2099-0001", "debian 12", "tar", "CRITICAL", "Fake tar hole", fixed_version="9.9-1")
ABSENT = Advisory("CVE-2099-0002", "debian 12", "nonexistent-pkg", "CRITICAL", "Fake absent package")
GZIP_OLD = Advisory("CVE-2099-0003", "debian 12", "gzip", "HIGH", "Fixed long ago", fixed_version="1.0-1")
FOO = Advisory("GHSA-fake-0001-0001", "pip", "foo", "HIGH", "Fake foo hole", fixed_version="2.0", vulnerable=("<2.0",))


def test_trivy_tree_has_trivy_db_shapes() -> None:
    tree: Any = trivy_db_tree([TAR, ABSENT, FOO])
    assert json.loads(tree[b"debian 12"][b"tar"][b"CVE-2099-0001"]) == {"FixedVersion": "9.9-1"}
    assert json.loads(tree[b"debian 12"][b"nonexistent-pkg"][b"CVE-2099-0002"]) == {}
    pip = tree[b"pip::GitHub Security Advisory pip"][b"foo"][b"GHSA-fake-0001-0001"]
    assert json.loads(pip) == {"VulnerableVersions": ["<2.0"], "PatchedVersions": ["2.0"]}
    assert json.loads(tree[b"data-source"][b"debian 12"])["ID"] == "debian"
    assert json.loads(tree[b"data-source"][b"pip::GitHub Security Advisory pip"])["ID"] == "ghsa"
    vuln = json.loads(tree[b"vulnerability"][b"CVE-2099-0001"])
    assert vuln == {"Title": "Fake tar hole", "Severity": "CRITICAL", "VendorSeverity": {"debian": 4, "nvd": 4}}


@pytest.mark.parametrize(
    ("advisory", "message"),
    [
        (Advisory("X-1", "alpine 3.20", "musl", "HIGH", "t"), "unsupported ecosystem"),
        (Advisory("X-1", "debian 12", "tar", "SEVERE", "t"), "severity must be one of"),
        (Advisory("X-1", "pip", "foo", "LOW", "t"), "needs 'vulnerable' ranges"),
        (Advisory("X-1", "debian 12", "tar", "LOW", "t", vulnerable=("<1",)), "pip advisories only"),
    ],
)
def test_bad_advisories_are_rejected(advisory: Advisory, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        trivy_db_tree([advisory])


def test_write_trivy_db_lays_out_the_cache_dir(tmp_path: Path) -> None:
    db_dir = write_trivy_db(tmp_path / "cache", [TAR, FOO])
    assert db_dir == tmp_path / "cache" / "db"
    metadata = json.loads((db_dir / "metadata.json").read_text())
    assert metadata["Version"] == 2 and metadata["NextUpdate"].startswith("2999-")
    assert metadata["UpdatedAt"].endswith("Z") and metadata["DownloadedAt"].endswith("Z")
    age = datetime.now(UTC) - datetime.fromisoformat(metadata["UpdatedAt"])
    assert timedelta(0) <= age < timedelta(minutes=1)  # dated now unless told otherwise: the age gate passes
    check_file(db_dir / "trivy.db")
    assert read_bbolt(db_dir / "trivy.db") == trivy_db_tree([TAR, FOO])


# --- integration: real Trivy reads the DB offline ---


def trivy_json(trivy: Path, *args: str) -> list[dict[str, Any]]:
    proc = subprocess.run([str(trivy), *args, "--format", "json", "--quiet"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    return [v for result in report.get("Results") or [] for v in result.get("Vulnerabilities") or []]


OFFLINE = ("--skip-db-update", "--offline-scan", "--skip-java-db-update", "--scanners", "vuln")


@pytest.mark.docker
def test_trivy_image_scan_finds_planted_critical(docker_engine: str, tmp_path: Path, trivy: Path) -> None:
    padding = [
        Advisory(f"CVE-2098-{i:04d}", "debian 12", f"pad-{i:04d}", "LOW", f"pad {i}", fixed_version="1")
        for i in range(1500)
    ]  # forces multi-page buckets on Trivy's side too
    write_trivy_db(tmp_path / "cache", [TAR, ABSENT, GZIP_OLD, *padding])
    tarball = tmp_path / "image.tar"
    subprocess.run([docker_engine, "save", "-o", str(tarball), BASE_IMAGE], check=True, timeout=300)
    installed = subprocess.run(
        [docker_engine, "run", "--rm", BASE_IMAGE, "dpkg-query", "-W", "-f", "${Version}", "tar"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout

    vulns = trivy_json(trivy, "image", "--input", str(tarball), "--cache-dir", str(tmp_path / "cache"), *OFFLINE)

    assert [(v["VulnerabilityID"], v["PkgName"]) for v in vulns] == [("CVE-2099-0001", "tar")]
    (tar,) = vulns
    assert tar["Severity"] == "CRITICAL" and tar["Title"] == "Fake tar hole"
    assert tar["InstalledVersion"] == installed and tar["FixedVersion"] == "9.9-1"


@pytest.mark.docker
def test_layers_analysed_before_are_judged_against_the_new_db(docker_engine: str, tmp_path: Path,
                                                              trivy: Path) -> None:
    """The image scan keeps what Trivy found in each layer (`fanal/`); an advisory added later still finds it."""
    from tasks.scan import image_scan_argv

    def scan() -> list[tuple[str, str]]:
        argv = image_scan_argv(str(trivy), str(tmp_path / "cache"), BASE_IMAGE, ScanPolicy(), insecure=True)
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        results = json.loads(proc.stdout).get("Results") or []
        return [(v["VulnerabilityID"], v["PkgName"]) for r in results for v in r.get("Vulnerabilities") or []]

    write_trivy_db(tmp_path / "cache", [])
    assert scan() == []
    assert (tmp_path / "cache" / "fanal" / "fanal.db").stat().st_size > 0  # the layers' packages, kept
    write_trivy_db(tmp_path / "cache", [TAR])
    assert scan() == [("CVE-2099-0001", "tar")]


def test_trivy_fs_scan_finds_planted_pip_advisory(tmp_path: Path, trivy: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "requirements.txt").write_text("foo==1.0\nbar==1.0\n")
    write_trivy_db(tmp_path / "cache", [FOO, Advisory("GHSA-fake-0002", "pip", "bar", "LOW", "t", "0.5", ("<0.5",))])

    vulns = trivy_json(trivy, "fs", str(project), "--cache-dir", str(tmp_path / "cache"), *OFFLINE)

    keys = ("VulnerabilityID", "PkgName", "InstalledVersion", "FixedVersion", "Severity")
    found = [tuple(v[k] for k in keys) for v in vulns]
    assert found == [("GHSA-fake-0001-0001", "foo", "1.0", "2.0", "HIGH")]


def test_a_repository_scan_of_a_tree_scanned_before_is_reused_and_judged_afresh(
        tmp_path: Path, trivy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another commit in another place with the same files reuses Trivy's report; the policy is applied anew."""
    from datetime import date

    from sunday_release.config import AllowedFinding
    from tasks import scan as scan_module
    from tasks.source import Checkout

    monkeypatch.setenv("SUNDAY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SUNDAY_TRIVY", str(trivy))
    monkeypatch.setenv("SUNDAY_TRIVY_CACHE", str(tmp_path / "cache"))
    ran: list[str] = []
    real_run = scan_module.run

    def spy(argv: list[str], **kwargs: Any) -> Any:
        ran.append(Path(argv[0]).name)
        return real_run(argv, **kwargs)

    monkeypatch.setattr(scan_module, "run", spy)

    def checkout(name: str, files: dict[str, str]) -> Checkout:
        path = tmp_path / name
        for file, text in files.items():
            (path / file).parent.mkdir(parents=True, exist_ok=True)
            (path / file).write_text(text)
        git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@example.com"]
        subprocess.run(["git", "init", "-q", str(path)], check=True)
        subprocess.run([*git, "add", "."], check=True)
        subprocess.run([*git, "commit", "-qm", name], check=True)
        sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        return Checkout(str(path), "main", str(path), sha, "2026-12-05T00:00:00+00:00")

    leak = {"app/settings.env": "AWS_ACCESS_KEY_ID=" + "AKIA" + "2E0A8F3B244C9986\n", "README.md": "x\n"}
    allow = [AllowedFinding(id="aws-access-key-id", reason="a test key", expires=date.today() + timedelta(days=1))]
    with pytest.raises(GateFailed, match="repository scan: 1 blocking"):
        scan_module.scan_repository.fn(checkout("first", leak), ScanPolicy())
    assert ran == ["git", "trivy"]

    ran.clear()
    second = checkout("second", leak)  # another commit, another workspace: the same tree
    assert scan_module.scan_repository.fn(second, ScanPolicy(allow=allow)).passed
    assert ran == ["git"]  # Trivy did not run
    expired = [allow[0].model_copy(update={"expires": date.today() - timedelta(days=1)})]
    with pytest.raises(GateFailed, match="repository scan: 1 blocking"):
        scan_module.scan_repository.fn(second, ScanPolicy(allow=expired))
    assert scan_module.scan_repository.fn(second, ScanPolicy(allow=allow, skip_dirs=["docs"])).passed  # new flags
    assert ran == ["git", "git", "git", "trivy"]

    ran.clear()
    third = checkout("third", {**leak, "README.md": "y\n"})  # one file changed: a new tree, a new scan
    assert scan_module.scan_repository.fn(third, ScanPolicy(allow=allow)).passed
    assert ran == ["git", "trivy"]


# --- the DB's age gate (scan.db_max_age_days) ---

NOW = datetime(2026, 12, 3, 0, 0, tzinfo=UTC)


def write_metadata(cache: Path, text: str) -> Path:
    (cache / "db").mkdir(parents=True, exist_ok=True)
    (cache / "db" / "metadata.json").write_text(text)
    return cache / "db" / "metadata.json"


def test_a_fresh_db_passes_and_its_date_is_returned(tmp_path: Path) -> None:
    write_trivy_db(tmp_path, [TAR], now=NOW - timedelta(days=2, hours=23))
    assert check_db_fresh(tmp_path, 3, NOW) == NOW - timedelta(days=2, hours=23)


def test_a_db_exactly_max_age_old_passes_one_second_more_fails(tmp_path: Path) -> None:
    write_trivy_db(tmp_path, [TAR], now=NOW - timedelta(days=3))
    assert check_db_fresh(tmp_path, 3, NOW) == NOW - timedelta(days=3)
    with pytest.raises(GateFailed, match=r"updated 2026-11-30T00:00:00Z \(3 days 1 second ago\), older than the "
                                          r"allowed 3 days"):
        check_db_fresh(tmp_path, 3, NOW + timedelta(seconds=1))


def test_a_stale_db_fails_naming_its_date_age_limit_and_where_to_update(tmp_path: Path) -> None:
    write_trivy_db(tmp_path, [TAR], now=datetime(2026, 11, 20, tzinfo=UTC))
    with pytest.raises(GateFailed) as failed:
        check_db_fresh(tmp_path, 3, NOW)
    assert str(failed.value).startswith(
        "the Trivy vulnerability DB was updated 2026-11-20T00:00:00Z (13 days ago), older than the allowed 3 days: "
        f"update the offline DB (SUNDAY_TRIVY_CACHE={tmp_path}: ")
    assert "\n" not in str(failed.value)  # the CI summary shows a failure's first line
    assert check_db_fresh(tmp_path, 14, NOW) == datetime(2026, 11, 20, tzinfo=UTC)  # a looser policy accepts it


def test_trivys_own_metadata_format_is_read(tmp_path: Path) -> None:
    """`trivy --download-db-only` writes nanoseconds; any RFC 3339 offset is turned into UTC."""
    write_metadata(tmp_path, json.dumps({"Version": 2, "NextUpdate": "2026-12-03T12:00:00.1Z",
                                         "UpdatedAt": "2026-12-02T06:11:07.524485797Z",
                                         "DownloadedAt": "2026-12-02T07:00:00.5Z"}))
    assert check_db_fresh(tmp_path, 3, NOW) == datetime(2026, 12, 2, 6, 11, 7, 524485, tzinfo=UTC)
    write_metadata(tmp_path, '{"UpdatedAt": "2026-11-30T01:30:00+02:00"}')
    assert check_db_fresh(tmp_path, 4, NOW) == datetime(2026, 11, 29, 23, 30, tzinfo=UTC)
    with pytest.raises(GateFailed, match=r"updated 2026-11-29T23:30:00Z \(3 days 30 minutes ago\)"):
        check_db_fresh(tmp_path, 3, NOW)


def test_a_db_dated_after_now_passes(tmp_path: Path) -> None:  # the clocks of two machines disagree a little
    write_trivy_db(tmp_path, [TAR], now=NOW + timedelta(hours=1))
    assert check_db_fresh(tmp_path, 3, NOW) == NOW + timedelta(hours=1)


def test_missing_metadata_fails_naming_the_path(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "trivy.db").write_bytes(b"")  # a DB without its metadata: its age is unknown
    with pytest.raises(GateFailed) as failed:
        check_db_fresh(tmp_path, 3, NOW)
    message = str(failed.value)
    assert f"cannot read the Trivy vulnerability DB's metadata {tmp_path / 'db' / 'metadata.json'}" in message
    assert "No such file or directory" in message and "its age is unknown" in message


@pytest.mark.parametrize(("text", "message"), [
    ('{"Version": 2, "UpdatedAt": "2026-12-0', "is not JSON"),
    ('["2026-12-01T00:00:00Z"]', "has no valid UpdatedAt .*got None"),
    ('{"Version": 2}', "has no valid UpdatedAt .*got None"),
    ('{"UpdatedAt": 1764547200}', "has no valid UpdatedAt .*got 1764547200"),
    ('{"UpdatedAt": "yesterday"}', "has no valid UpdatedAt .*got 'yesterday'"),
    ('{"UpdatedAt": "2026-12-01T00:00:00"}', "has no valid UpdatedAt .*got '2026-12-01T00:00:00'"),  # no offset
], ids=["torn", "not-an-object", "no-UpdatedAt", "a-number", "not-a-time", "no-offset"])
def test_malformed_metadata_fails_naming_the_path(tmp_path: Path, text: str, message: str) -> None:
    path = write_metadata(tmp_path, text)
    with pytest.raises(GateFailed, match=message) as failed:
        check_db_fresh(tmp_path, 3, NOW)
    assert str(path) in str(failed.value) and "its age is unknown" in str(failed.value)


def test_the_policy_default_is_three_days_and_bounded() -> None:
    assert ScanPolicy().db_max_age_days == 3
    for bad in (0, 366):
        with pytest.raises(ValueError, match="db_max_age_days"):
            ScanPolicy(db_max_age_days=bad)


# --- the demo's DB is dated now, and refreshed once a day old ---


def demo_db_module() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "infra" / "local" / "demo_trivy_db.py"
    spec = importlib.util.spec_from_file_location("demo_trivy_db", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_demo_writes_a_fresh_db_and_refreshes_only_its_own(tmp_path: Path) -> None:
    demo = demo_db_module()
    assert demo.main(tmp_path / "new").startswith("wrote")
    check_db_fresh(tmp_path / "new", 1, datetime.now(UTC))
    assert demo.main(tmp_path / "new").startswith("Trivy DB present")  # fresh: kept (the scan cache stays warm)

    write_trivy_db(tmp_path / "old", demo.DEMO_ADVISORIES, now=datetime.now(UTC) - timedelta(days=2))
    assert demo.main(tmp_path / "old").startswith("refreshed the FAKE demo Trivy DB")
    check_db_fresh(tmp_path / "old", 1, datetime.now(UTC))

    write_trivy_db(tmp_path / "real", [TAR], now=datetime.now(UTC) - timedelta(days=2))  # not the demo's
    before = (tmp_path / "real" / "db" / "metadata.json").read_text()
    assert "not the demo's, left alone" in demo.main(tmp_path / "real")
    assert (tmp_path / "real" / "db" / "metadata.json").read_text() == before


# --- integration: the image scan task refuses a stale DB, cached report or not ---


def platform_ref(repository: str, tag: str, arch: str) -> str:
    """`localhost:5000/REPO@sha256:…` of one platform's manifest in the local registry."""
    index = httpx.get(f"http://localhost:5000/v2/{repository}/manifests/{tag}", headers={"Accept": ", ".join((
        "application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"))})
    index.raise_for_status()
    (digest,) = [m["digest"] for m in index.json()["manifests"] if m["platform"]["architecture"] == arch]
    return f"localhost:5000/{repository}@{digest}"


@pytest.mark.docker
def test_image_scan_refuses_a_stale_db_even_with_a_cached_report(docker_engine: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from sunday_release.scan_cache import scan_cache_key
    from sunday_release.settings import Settings
    from tasks.scan import image_scan_argv, kept_report, scan_image

    cache = tmp_path / "trivy"
    monkeypatch.setenv("SUNDAY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SUNDAY_TRIVY_CACHE", str(cache))
    image = platform_ref("base/debian", "bookworm", "amd64")
    medium_tar = Advisory("CVE-2099-0100", "debian 12", "tar", "MEDIUM", "FAKE: tar", "9.9-1")
    updated = datetime.now(UTC) - timedelta(days=4)
    write_trivy_db(cache, [medium_tar], now=updated)
    sarif = str(tmp_path / "sarif")

    # a policy that accepts a 5-day-old DB: real Trivy scans the image, its report is cached
    scan = scan_image.fn("base", "linux/amd64", image, ScanPolicy(db_max_age_days=5), sarif)
    assert scan.report.passed and [f.id for f in scan.report.findings] == ["CVE-2099-0100"]
    settings = Settings.from_env()
    key = scan_cache_key(image, settings.trivy, cache, image_scan_argv("trivy", "", "", ScanPolicy(), True))
    assert key and kept_report(key) is not None

    # the default policy (3 days): the same digest, the same DB, a cached report — and the gate says no
    with pytest.raises(GateFailed) as failed:
        scan_image.fn("base", "linux/amd64", image, ScanPolicy(), sarif)
    assert re.match(re.escape(f"base image {image} (linux/amd64): the Trivy vulnerability DB was updated "
                              f"{updated:%Y-%m-%dT%H:%M:%SZ} (4 days") + r"( \d+ seconds?)? ago\), older than the "
                    r"allowed 3 days: update the offline DB", str(failed.value)), str(failed.value)
    assert failed.value.report is None  # no findings are reported from a stale DB

    # the DB updated: a new key, a real scan, the gate passes
    write_trivy_db(cache, [medium_tar])
    again = scan_image.fn("base", "linux/amd64", image, ScanPolicy(), sarif)
    assert again.report.passed and again.report.counts["MEDIUM"] == 1
    assert re.fullmatch(r".*/base-linux-amd64\.sarif", again.sarif)


@pytest.mark.docker
def test_ci_with_a_stale_db_exits_1_naming_the_date(prefect_api: str, docker_engine: str,
                                                    make_repo: Callable[..., Path], tmp_path: Path,
                                                    registry: Registry) -> None:
    """The whole path: scan task → the images stage's failure lines → `sunday-release ci` (exit 1, stderr)."""
    def use_registry(repo: Path) -> None:
        config = repo / "sunday-release.yaml"
        config.write_text(f"registry: {registry.address}\n" + config.read_text())

    cache = tmp_path / "trivy"
    updated = datetime.now(UTC) - timedelta(days=4)
    write_trivy_db(cache, [ABSENT], now=updated)
    repo = make_repo(FIXTURES / "other-app", edit=use_registry)
    done = sunday("ci", "--repo", str(repo), "--ref", "main", "--json", api=prefect_api,
                  env={"SUNDAY_TRIVY_CACHE": str(cache)})
    assert done.returncode == 1, done.stderr
    assert re.search(rf"CI failed:\nvulnerability scan failed: tool image {re.escape(registry.address)}/wordcount/tool"
                     rf"@sha256:\w+ \(linux/amd64\): the Trivy vulnerability DB was updated "
                     rf"{updated:%Y-%m-%dT%H:%M:%SZ} \(4 days( \d+ seconds?)? ago\), older than the allowed 3 days",
                     done.stderr), done.stderr
    tool = json.loads(done.stdout)["services"]["tool"]
    assert tool["vulnerabilities"] is None  # nothing is reported from a stale DB, not even "0 found"
