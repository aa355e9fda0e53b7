"""The bbolt writer (checked by an independent page walker) and the offline Trivy DB, scanned by real Trivy."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sunday_release.trivydb import Advisory, BoltTree, read_bbolt, trivy_db_tree, write_bbolt, write_trivy_db

BASE_IMAGE = "localhost:5000/base/debian:bookworm"
TRIVY = str(Path(sys.executable).parent / "trivy")
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
    check_file(db_dir / "trivy.db")
    assert read_bbolt(db_dir / "trivy.db") == trivy_db_tree([TAR, FOO])


# --- integration: real Trivy reads the DB offline ---


def trivy_json(*args: str) -> list[dict[str, Any]]:
    proc = subprocess.run([TRIVY, *args, "--format", "json", "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    return [v for result in report.get("Results") or [] for v in result.get("Vulnerabilities") or []]


OFFLINE = ("--skip-db-update", "--offline-scan", "--skip-java-db-update", "--scanners", "vuln")


@pytest.mark.docker
def test_trivy_image_scan_finds_planted_critical(docker_engine: str, tmp_path: Path) -> None:
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

    vulns = trivy_json("image", "--input", str(tarball), "--cache-dir", str(tmp_path / "cache"), *OFFLINE)

    assert [(v["VulnerabilityID"], v["PkgName"]) for v in vulns] == [("CVE-2099-0001", "tar")]
    (tar,) = vulns
    assert tar["Severity"] == "CRITICAL" and tar["Title"] == "Fake tar hole"
    assert tar["InstalledVersion"] == installed and tar["FixedVersion"] == "9.9-1"


def test_trivy_fs_scan_finds_planted_pip_advisory(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "requirements.txt").write_text("foo==1.0\nbar==1.0\n")
    write_trivy_db(tmp_path / "cache", [FOO, Advisory("GHSA-fake-0002", "pip", "bar", "LOW", "t", "0.5", ("<0.5",))])

    vulns = trivy_json("fs", str(project), "--cache-dir", str(tmp_path / "cache"), *OFFLINE)

    keys = ("VulnerabilityID", "PkgName", "InstalledVersion", "FixedVersion", "Severity")
    found = [tuple(v[k] for k in keys) for v in vulns]
    assert found == [("GHSA-fake-0001-0001", "foo", "1.0", "2.0", "HIGH")]
