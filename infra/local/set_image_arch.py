"""Set the architecture of a local image (docker import ignores --platform): save, edit, load."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile


def main(tag: str, arch: str) -> None:
    saved = subprocess.run(["/usr/bin/docker", "save", tag], check=True, capture_output=True).stdout
    src = tarfile.open(fileobj=io.BytesIO(saved))
    manifest = json.loads(src.extractfile("manifest.json").read())  # type: ignore[union-attr]
    config_name = manifest[0]["Config"]
    config = json.loads(src.extractfile(config_name).read())  # type: ignore[union-attr]
    config["architecture"] = arch
    new_config = json.dumps(config).encode()
    new_name = hashlib.sha256(new_config).hexdigest() + ".json"
    manifest[0]["Config"] = new_name
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as dst:
        for member in src.getmembers():
            if member.name in (config_name, "manifest.json", "repositories"):
                continue
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        for name, data in ((new_name, new_config), ("manifest.json", json.dumps(manifest).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    subprocess.run(["/usr/bin/docker", "rmi", tag], check=True, capture_output=True)
    subprocess.run(["/usr/bin/docker", "load", "-q"], input=out.getvalue(), check=True, capture_output=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
