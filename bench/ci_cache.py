"""CI cache: cold CI (empty registry and build cache) vs warm CI on the same commit vs one change.

Prints the three wall times and the ratios warm/cold (target <= 0.10) and one-change/cold
(target <= 0.5). Uses a registry and a Prefect server of its own; "cold" prunes Docker's build
cache (`docker builder prune -af`), so the benchmark costs a full multi-arch build (arm64 under
QEMU) and leaves the machine's build cache empty.

    .venv/bin/python bench/ci_cache.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import free_port, git, make_repo, prefect_server, run_ci


def start_registry(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    address = f"127.0.0.1:{free_port()}"
    root.mkdir(parents=True)
    config = root / "config.yml"
    config.write_text(f"version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {root}/data}}}}\n"
                      f"http: {{addr: {address}}}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            httpx.get(f"http://{address}/v2/", timeout=1)
            return proc, address
        except httpx.HTTPError:
            time.sleep(0.1)
    sys.exit("docker-registry did not start")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sunday-bench-cache-") as tmp:
        work = Path(tmp)
        registry, address = start_registry(work / "registry")
        try:
            with prefect_server(work / "home"):
                repo = make_repo(work / "repo", config_prefix=f"registry: {address}\n")
                subprocess.run(["/usr/bin/docker", "builder", "prune", "-af"], check=True, capture_output=True)
                cold = run_ci(repo)
                print(f"cold CI (empty registry, empty build cache): {cold:7.1f} s")
                warm = run_ci(repo)
                print(f"warm CI (same commit):                       {warm:7.1f} s")
                style = repo / "frontend" / "public" / "style.css"
                style.write_text(style.read_text() + "\n/* one-line change */\n")
                git(repo, "commit", "-qam", "one line in the frontend")
                changed = run_ci(repo)
                print(f"CI after a one-line change in one service:   {changed:7.1f} s")
                print(f"ratio warm/cold        {warm / cold:5.2f}  (target <= 0.10)")
                print(f"ratio one-change/cold  {changed / cold:5.2f}  (target <= 0.50)")
        finally:
            registry.terminate()
            registry.wait(10)


if __name__ == "__main__":
    main()
