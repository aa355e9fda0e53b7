"""Write a small offline Trivy vulnerability DB (bbolt file + metadata.json) holding chosen advisories.

Trivy cannot download its DB here, so tests and the demo generate one and scan with
``trivy ... --skip-db-update --offline-scan --cache-dir DIR``. Two layers:

* :func:`write_bbolt` / :func:`read_bbolt` — a minimal writer and reader of the bbolt file
  format (etcd-io/bbolt, format version 2): two meta pages, an empty freelist page, then
  every bucket as a tree of leaf pages (split into several leaves under branch pages when
  it does not fit one page; a single oversized element uses overflow pages). Small
  buckets without nested buckets are stored inline in their parent, as bbolt does.
* :func:`write_trivy_db` — lays :class:`Advisory` values out the way trivy-db does
  (schema version 2): ``"debian 12"`` → source package → id → ``{"FixedVersion"}``,
  ``"pip::GitHub Security Advisory pip"`` → package → id →
  ``{"VulnerableVersions", "PatchedVersions"}``, ``"data-source"`` → bucket name →
  ``{"ID", "Name", "URL"}`` and ``"vulnerability"`` → id → ``{"Title", "Severity",
  "VendorSeverity"}`` (vendor severities are ints: UNKNOWN=0 … CRITICAL=4).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeAlias

__all__ = [
    "PAGE_SIZE",
    "SEVERITIES",
    "Advisory",
    "BoltTree",
    "read_bbolt",
    "trivy_db_tree",
    "write_bbolt",
    "write_trivy_db",
]

PAGE_SIZE = 4096
SEVERITIES = ("UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL")  # index = trivy-db's Severity int

BoltTree: TypeAlias = "Mapping[bytes, BoltTree | bytes]"
"""A bucket: key → nested bucket (a mapping) or value (bytes)."""

# bbolt format constants (internal/common/page.go, types.go, meta.go).
_MAGIC = 0xED0CDAED
_VERSION = 2
_BRANCH_PAGE = 0x01
_LEAF_PAGE = 0x02
_META_PAGE = 0x04
_FREELIST_PAGE = 0x10
_BUCKET_LEAF_FLAG = 0x01
_PAGE_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
_LEAF_ELEMENT = struct.Struct("<IIII")  # flags, pos, ksize, vsize
_BRANCH_ELEMENT = struct.Struct("<IIQ")  # pos, ksize, pgid
_BUCKET_HEADER = struct.Struct("<QQ")  # root pgid, sequence
_META_BODY = struct.Struct("<IIIIQQQQQ")  # magic, version, pageSize, flags, root{root, seq}, freelist, pgid, txid
_CHECKSUM = struct.Struct("<Q")
_FREELIST_PGID = 2
_MAX_KEY_SIZE = 32768

_FNV64_OFFSET = 0xCBF29CE484222325
_FNV64_PRIME = 0x100000001B3


def _fnv64a(data: bytes) -> int:
    h = _FNV64_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV64_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


def _meta_page(page_id: int, root_pgid: int, hwm: int, txid: int) -> bytes:
    body = _META_BODY.pack(_MAGIC, _VERSION, PAGE_SIZE, 0, root_pgid, 0, _FREELIST_PGID, hwm, txid)
    header = _PAGE_HEADER.pack(page_id, _META_PAGE, 0, 0)
    return header + body + _CHECKSUM.pack(_fnv64a(body))


class _PageAllocator:
    """Hands out page ids from 3 on and keeps the serialized pages in id order."""

    def __init__(self) -> None:
        self.next_pgid = _FREELIST_PGID + 1
        self.blobs: list[bytes] = []

    def add(self, flags: int, count: int, body: bytes) -> int:
        size = _PAGE_HEADER.size + len(body)
        npages = -(-size // PAGE_SIZE)
        pgid = self.next_pgid
        self.next_pgid += npages
        blob = _PAGE_HEADER.pack(pgid, flags, count, npages - 1) + body
        self.blobs.append(blob + b"\0" * (npages * PAGE_SIZE - len(blob)))
        return pgid


def _leaf_body(elements: list[tuple[int, bytes, bytes]]) -> bytes:
    headers, data = [], []
    offset = len(elements) * _LEAF_ELEMENT.size  # from element 0 to the first data byte
    for i, (flags, key, value) in enumerate(elements):
        pos = offset - i * _LEAF_ELEMENT.size  # pos is relative to the element itself
        headers.append(_LEAF_ELEMENT.pack(flags, pos, len(key), len(value)))
        data.append(key + value)
        offset += len(key) + len(value)
    return b"".join(headers) + b"".join(data)


def _branch_body(children: list[tuple[bytes, int]]) -> bytes:
    headers, data = [], []
    offset = len(children) * _BRANCH_ELEMENT.size
    for i, (key, pgid) in enumerate(children):
        headers.append(_BRANCH_ELEMENT.pack(offset - i * _BRANCH_ELEMENT.size, len(key), pgid))
        data.append(key)
        offset += len(key)
    return b"".join(headers) + b"".join(data)


def _chunks(sizes: list[int]) -> list[tuple[int, int]]:
    """Split items (element + data sizes) into [start, end) runs that fit one page each."""
    runs, start, used = [], 0, _PAGE_HEADER.size
    for i, size in enumerate(sizes):
        if i > start and used + size > PAGE_SIZE:
            runs.append((start, i))
            start, used = i, _PAGE_HEADER.size
        used += size
    runs.append((start, len(sizes)))
    return runs


def _elements(alloc: _PageAllocator, bucket: BoltTree) -> list[tuple[int, bytes, bytes]]:
    """The sorted leaf elements (flags, key, value) of a bucket; nested buckets are written first."""
    elements: list[tuple[int, bytes, bytes]] = []
    for key in sorted(bucket):
        if not isinstance(key, bytes) or not key or len(key) > _MAX_KEY_SIZE:
            raise ValueError(f"bbolt keys must be 1..{_MAX_KEY_SIZE} bytes, got {key!r}")
        value = bucket[key]
        if isinstance(value, bytes):
            elements.append((0, key, value))
        elif isinstance(value, Mapping):
            elements.append((_BUCKET_LEAF_FLAG, key, _bucket_value(alloc, value)))
        else:
            raise TypeError(f"value of {key!r} must be bytes or a mapping, got {type(value).__name__}")
    return elements


def _write_tree(alloc: _PageAllocator, elements: list[tuple[int, bytes, bytes]]) -> int:
    """Write elements as leaf pages (plus branch pages above when several) and return the root page id."""
    sizes = [_LEAF_ELEMENT.size + len(k) + len(v) for _, k, v in elements]
    level = [
        (elements[a][1] if a < b else b"", alloc.add(_LEAF_PAGE, b - a, _leaf_body(elements[a:b])))
        for a, b in _chunks(sizes)
    ]
    while len(level) > 1:
        sizes = [_BRANCH_ELEMENT.size + len(k) for k, _ in level]
        level = [(level[a][0], alloc.add(_BRANCH_PAGE, b - a, _branch_body(level[a:b]))) for a, b in _chunks(sizes)]
    return level[0][1]


def _bucket_value(alloc: _PageAllocator, bucket: BoltTree) -> bytes:
    """The value stored under a nested bucket's key: its header, plus an inline page when small.

    Like bbolt, a bucket without nested buckets whose page would take at most a quarter
    of a page is stored inline (root pgid 0, the leaf page right after the header).
    """
    elements = _elements(alloc, bucket)
    size = _PAGE_HEADER.size + sum(_LEAF_ELEMENT.size + len(k) + len(v) for _, k, v in elements)
    if size <= PAGE_SIZE // 4 and not any(flags & _BUCKET_LEAF_FLAG for flags, _, _ in elements):
        page = _PAGE_HEADER.pack(0, _LEAF_PAGE, len(elements), 0) + _leaf_body(elements)
        return _BUCKET_HEADER.pack(0, 0) + page
    return _BUCKET_HEADER.pack(_write_tree(alloc, elements), 0)


def write_bbolt(path: Path, tree: BoltTree) -> Path:
    """Write a bbolt database file holding ``tree``.

    Args:
        path: The file to create (overwritten if it exists).
        tree: The root bucket's contents: every top-level value must be a mapping (bbolt
            keeps only buckets at the root); inside buckets a mapping is a nested bucket
            and ``bytes`` a plain value. Keys are non-empty ``bytes``; they are written
            in byte order.

    Returns:
        ``path``.

    Raises:
        ValueError: A key is empty or too long, or a top-level value is not a bucket.
        TypeError: A value is neither ``bytes`` nor a mapping.
    """
    for key, value in tree.items():
        if not isinstance(value, Mapping):
            raise ValueError(f"top-level key {key!r} must hold a bucket (bbolt has no values at the root)")
    alloc = _PageAllocator()
    root = _write_tree(alloc, _elements(alloc, tree))
    hwm = alloc.next_pgid
    pages = [
        _meta_page(0, root, hwm, txid=0),
        _meta_page(1, root, hwm, txid=1),
        _PAGE_HEADER.pack(_FREELIST_PGID, _FREELIST_PAGE, 0, 0),
    ]
    data = b"".join(p + b"\0" * (PAGE_SIZE - len(p)) for p in pages) + b"".join(alloc.blobs)
    assert len(data) == hwm * PAGE_SIZE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def read_bbolt(path: Path) -> dict[bytes, object]:
    """Read a bbolt file back into nested dicts (for tests and debugging).

    Picks the valid meta page with the highest transaction id, checking magic, version
    and checksum, and follows branch, leaf and inline-bucket pages.

    Args:
        path: The bbolt file.

    Returns:
        The root bucket: key → nested ``dict`` (a bucket) or ``bytes`` (a value).

    Raises:
        ValueError: No valid meta page, or a page that is not what its parent says.
    """
    data = path.read_bytes()
    best: tuple[int, int, int] | None = None  # txid, root, page size
    offsets = [0]
    if len(data) >= _PAGE_HEADER.size + 12 and struct.unpack_from("<I", data, _PAGE_HEADER.size)[0] == _MAGIC:
        offsets.append(struct.unpack_from("<I", data, _PAGE_HEADER.size + 8)[0])  # meta 1 follows meta 0
    else:
        offsets.append(PAGE_SIZE)
    for offset in offsets:
        end = offset + _PAGE_HEADER.size + _META_BODY.size
        if len(data) < end + _CHECKSUM.size:
            continue
        body = data[offset + _PAGE_HEADER.size : end]
        magic, version, page_size, _, root, _, _, _, txid = _META_BODY.unpack(body)
        (checksum,) = _CHECKSUM.unpack_from(data, end)
        if magic == _MAGIC and version == _VERSION and checksum == _fnv64a(body):
            if best is None or txid > best[0]:
                best = (txid, root, page_size)
    if best is None:
        raise ValueError(f"{path}: no valid bbolt meta page")
    _, root, page_size = best

    def read_page(buf: bytes, base: int) -> dict[bytes, object]:
        _, flags, count, _ = _PAGE_HEADER.unpack_from(buf, base)
        out: dict[bytes, object] = {}
        first = base + _PAGE_HEADER.size
        if flags == _LEAF_PAGE:
            for i in range(count):
                at = first + i * _LEAF_ELEMENT.size
                eflags, pos, ksize, vsize = _LEAF_ELEMENT.unpack_from(buf, at)
                key = buf[at + pos : at + pos + ksize]
                value = buf[at + pos + ksize : at + pos + ksize + vsize]
                if eflags & _BUCKET_LEAF_FLAG:
                    sub_root, _ = _BUCKET_HEADER.unpack_from(value)
                    out[key] = read_page(value, _BUCKET_HEADER.size) if sub_root == 0 else read_pgid(sub_root)
                else:
                    out[key] = value
        elif flags == _BRANCH_PAGE:
            for i in range(count):
                at = first + i * _BRANCH_ELEMENT.size
                _, _, child = _BRANCH_ELEMENT.unpack_from(buf, at)
                out.update(read_pgid(child))
        else:
            raise ValueError(f"{path}: expected a leaf or branch page, got flags {flags:#x}")
        return out

    def read_pgid(pgid: int) -> dict[bytes, object]:
        (page_id,) = struct.unpack_from("<Q", data, pgid * page_size)
        if page_id != pgid:
            raise ValueError(f"{path}: page {pgid} identifies as {page_id}")
        return read_page(data, pgid * page_size)

    return read_pgid(root)


@dataclass(frozen=True)
class Advisory:
    """One fake advisory to plant in the DB.

    Attributes:
        id: Vulnerability id, e.g. ``"CVE-2099-0001"``.
        ecosystem: ``"debian 12"`` (any ``"debian N"``) or ``"pip"``.
        package: The Debian SOURCE package name, or the pip package name.
        severity: CRITICAL, HIGH, MEDIUM, LOW or UNKNOWN.
        title: The vulnerability's title.
        fixed_version: Debian: the fixed version (``""`` = unfixed). pip: the first
            patched version.
        vulnerable: pip only: version ranges, e.g. ``("<2.0.0",)``.
    """

    id: str
    ecosystem: str
    package: str
    severity: str
    title: str
    fixed_version: str = ""
    vulnerable: tuple[str, ...] = ()


_PIP_BUCKET = "pip::GitHub Security Advisory pip"
_DATA_SOURCES = {
    "debian": {
        "ID": "debian",
        "Name": "Debian Security Tracker",
        "URL": "https://salsa.debian.org/security-tracker-team/security-tracker",
    },
    "pip": {
        "ID": "ghsa",
        "Name": "GitHub Security Advisory pip",
        "URL": "https://github.com/advisories?query=type%3Areviewed+ecosystem%3Apip",
    },
}


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _placement(adv: Advisory) -> tuple[str, str, dict[str, object]]:
    """Bucket name, data-source id and advisory JSON of one advisory."""
    if adv.severity not in SEVERITIES:
        raise ValueError(f"{adv.id}: severity must be one of {SEVERITIES}, got {adv.severity!r}")
    if not adv.id or not adv.package:
        raise ValueError(f"advisory needs an id and a package: {adv!r}")
    if adv.ecosystem.startswith("debian "):
        if adv.vulnerable:
            raise ValueError(f"{adv.id}: 'vulnerable' ranges are for pip advisories only")
        value: dict[str, object] = {"FixedVersion": adv.fixed_version} if adv.fixed_version else {}
        return adv.ecosystem, "debian", value
    if adv.ecosystem == "pip":
        if not adv.vulnerable and not adv.fixed_version:
            raise ValueError(f"{adv.id}: a pip advisory needs 'vulnerable' ranges or a 'fixed_version'")
        value = {}
        if adv.vulnerable:
            value["VulnerableVersions"] = list(adv.vulnerable)
        if adv.fixed_version:
            value["PatchedVersions"] = [adv.fixed_version]
        return _PIP_BUCKET, "pip", value
    raise ValueError(f"{adv.id}: unsupported ecosystem {adv.ecosystem!r} (expected 'debian N' or 'pip')")


def trivy_db_tree(advisories: Iterable[Advisory]) -> dict[bytes, BoltTree]:
    """The bucket tree trivy-db (schema 2) would hold for ``advisories``.

    Args:
        advisories: The advisories; one id may appear under several packages.

    Returns:
        The tree for :func:`write_bbolt`.

    Raises:
        ValueError: An advisory has an unknown ecosystem or severity, or one id is given
            two different severities or titles.
    """
    advisory_buckets: dict[str, dict[bytes, dict[bytes, bytes]]] = {}
    data_sources: dict[bytes, bytes] = {}
    details: dict[str, tuple[str, str, str]] = {}  # id → severity, title, data-source id
    for adv in advisories:
        bucket, source, value = _placement(adv)
        per_package = advisory_buckets.setdefault(bucket, {}).setdefault(adv.package.encode(), {})
        per_package[adv.id.encode()] = _json(value)
        data_sources[bucket.encode()] = _json(_DATA_SOURCES[source])
        seen = details.setdefault(adv.id, (adv.severity, adv.title, _DATA_SOURCES[source]["ID"]))
        if seen[:2] != (adv.severity, adv.title):
            raise ValueError(f"{adv.id}: given twice with different severity/title")
    vulnerabilities: dict[bytes, bytes] = {}
    for vuln_id, (severity, title, source_id) in details.items():
        level = SEVERITIES.index(severity)
        vulnerabilities[vuln_id.encode()] = _json(
            {"Title": title, "Severity": severity, "VendorSeverity": {source_id: level, "nvd": level}}
        )
    tree: dict[bytes, BoltTree] = {name.encode(): packages for name, packages in advisory_buckets.items()}
    tree[b"data-source"] = data_sources
    tree[b"vulnerability"] = vulnerabilities
    return tree


def write_trivy_db(
    cache_dir: Path,
    advisories: Iterable[Advisory],
    *,
    now: datetime | None = None,
) -> Path:
    """Create ``cache_dir/db/trivy.db`` and ``cache_dir/db/metadata.json`` for an offline scan.

    Scan with ``trivy ... --skip-db-update --offline-scan --cache-dir cache_dir``.

    Args:
        cache_dir: Trivy's cache dir (created if missing).
        advisories: The advisories to plant.
        now: The "downloaded/updated" time recorded in the metadata (default: now).

    Returns:
        The DB directory (``cache_dir/db``).

    Raises:
        ValueError: See :func:`trivy_db_tree`.
    """
    moment = now or datetime.now(UTC)
    db_dir = cache_dir / "db"
    write_bbolt(db_dir / "trivy.db", trivy_db_tree(advisories))
    metadata = {
        "Version": 2,
        "NextUpdate": "2999-01-01T00:00:00Z",
        "UpdatedAt": _rfc3339(moment),
        "DownloadedAt": _rfc3339(moment),
    }
    (db_dir / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return db_dir
