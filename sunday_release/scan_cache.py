"""The keys of Trivy's raw reports: what decides a report, by content, so any host that shares the results reuses it.

An image digest names its content, so a scan of the same digest with the same Trivy binary, the
same vulnerability DB and the same flags gives the same report. A warm CI run (same commit, or an
unchanged service) reuses the report instead of scanning again, on whatever worker it runs: the
reports are kept in the result storage (`tasks.scan`: a record per key in the run's result store). The gate
(severities, allow-list with its expiry dates) is applied to it afresh every run, so an expired
allow-list entry still blocks. A new DB (another `trivy.db`, or `metadata.json` other than its
download time), another Trivy or other flags make a new key: the cache never answers for a DB it was
not made with. The key does not age, the DB does: the image scan checks the DB's age
(`findings.check_db_fresh`) every run before it asks for a report, so a report made with a DB that has
since gone stale is never reused past the gate.

Files count by their content (sha256), not their path or time: two hosts that downloaded the same DB
and installed the same Trivy make the same keys. Hashing a 700 MB DB takes about a second, so a file's
digest is remembered by its identity (path, inode, size, modification time) in `DIGESTS` beside the DB.

The dependency audit (`trivy fs --scanners vuln` of the lockfiles) is keyed by the git tree and the DB.
The repository scan (`trivy fs`, misconfigurations and secrets) is keyed the same way, by the git tree
of the checkout: a tree id names every tracked file's content, mode and path, and a fresh checkout
holds exactly those files (Trivy skips `.git`). Its checks are the ones built into the Trivy binary,
or the bundle in the cache directory's `policy/` when one was put there: both are in the key.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

__all__ = ["DIGESTS", "audit_cache_key", "file_digest", "repo_scan_cache_key", "scan_cache_key"]

DIGESTS = ".sunday-digests.json"  # in the Trivy cache directory: {file identity: sha256}


def _identity(path: Path) -> str:
    """Path, inode, size and modification time: changes whenever the file is replaced or rewritten."""
    st = path.stat()
    return f"{path.resolve()}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def file_digest(path: Path, memo_dir: Path) -> str:
    """The sha256 of the file's content ("missing" when there is none), remembered in `memo_dir/DIGESTS` by the
    file's identity so an unchanged file is hashed once per host."""
    try:
        identity = _identity(path)
    except OSError:
        return "missing"
    memo = memo_dir / DIGESTS
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):  # not a memo of ours: rewritten below
        known = {}
    if isinstance(known.get(identity), str):
        return str(known[identity])
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    digest = h.hexdigest()
    if _identity(path) == identity:  # not rewritten while it was read
        known = {k: v for k, v in known.items() if not k.startswith(f"{path.resolve()}:")}  # older identities
        try:
            memo_dir.mkdir(parents=True, exist_ok=True)
            tmp = memo_dir / f".{DIGESTS}.{os.getpid()}"
            tmp.write_text(json.dumps({**known, identity: digest}))
            tmp.replace(memo)
        except OSError:  # a read-only cache directory: the digest is right, only not remembered
            pass
    return digest


def _metadata(db: Path) -> str:
    """`metadata.json` but its download time (which differs on every host that downloads the same DB)."""
    try:
        text = (db / "metadata.json").read_text()
    except OSError:
        return "missing"
    try:
        data = json.loads(text)
    except ValueError:
        return text
    return json.dumps({k: v for k, v in data.items() if k != "DownloadedAt"}, sort_keys=True) if isinstance(
        data, dict) else text


def scan_cache_key(image: str, trivy: str, db_dir: Path, flags: list[str]) -> str | None:
    """The key of one image scan, or None when `image` is not pinned by digest (nothing to key on).

    Stale when: the image digest, the Trivy binary, the DB (`db/metadata.json` but its download time,
    `db/trivy.db`'s content) or the scan flags change.
    """
    _, at, digest = image.rpartition("@")
    if not at or not digest.startswith("sha256:"):
        return None
    db = db_dir / "db"
    parts = [digest, file_digest(Path(trivy), db_dir), _metadata(db), file_digest(db / "trivy.db", db_dir), *flags]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def repo_scan_cache_key(tree: str, trivy: str, cache_dir: Path, flags: list[str]) -> str | None:
    """The key of one repository scan of git tree `tree`, or None when `tree` is not a tree id.

    Stale when: the tree, the Trivy binary (its built-in checks), a checks bundle in `cache_dir/policy`
    or the scan flags change.
    """
    if not (len(tree) in (40, 64) and all(c in "0123456789abcdef" for c in tree)):
        return None
    parts = ["fs", tree, file_digest(Path(trivy), cache_dir), file_digest(cache_dir / "policy" / "metadata.json",
                                                                          cache_dir), *flags]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def audit_cache_key(tree: str, trivy: str, db_dir: Path, flags: list[str]) -> str | None:
    """The key of one dependency audit (`trivy fs --scanners vuln`) of git tree `tree`, or None when `tree` is not a
    tree id. Stale when: the tree (any lockfile), the Trivy binary, the DB (as `scan_cache_key`) or the flags change."""
    if not (len(tree) in (40, 64) and all(c in "0123456789abcdef" for c in tree)):
        return None
    db = db_dir / "db"
    parts = ["audit", tree, file_digest(Path(trivy), db_dir), _metadata(db), file_digest(db / "trivy.db", db_dir),
             *flags]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]
