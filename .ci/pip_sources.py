"""This machine's pip configuration, made usable inside a container build.

``python3 .ci/pip_sources.py OUT_DIR`` writes ``OUT_DIR/pip.conf`` (every setting ``pip config list``
reports, environment variables included, in one ``[global]`` section) and prints one ``buildah
--volume`` argument per line: OUT_DIR itself and every local path the settings name (wheel
folders, ``file://`` indexes, constraint and certificate files), each mounted read-only under
``/run/quantjob-pip/`` with the settings rewritten to point there. The build then sees exactly
the package sources this machine sees: with a local ``torch==2.13.0+cpu`` wheel, pip takes it
instead of the multi-GB CUDA build from PyPI.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

MOUNT_ROOT = "/run/quantjob-pip"
PATH_KEYS = {"find-links", "constraint", "requirement", "cert", "client-cert", "index-url", "extra-index-url"}
LINE = re.compile(r"^(?P<scope>[^.]*)\.(?P<key>[^=]+)='(?P<value>.*)'$")


def pip_settings() -> dict[str, str]:
    """``pip config list`` as key -> value; environment variables win over files, as in pip."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], check=True,
                            capture_output=True, text=True).stdout
    from_files: dict[str, str] = {}
    from_env: dict[str, str] = {}
    for line in listed.splitlines():
        match = LINE.match(line.strip())
        if not match:
            continue
        target = from_env if match["scope"] == ":env:" else from_files
        target[match["key"]] = match["value"]
    return {**from_files, **from_env}


def local_path(item: str) -> Path | None:
    """The local file or folder an item names (a path or a ``file://`` URL), or None for remote URLs."""
    if item.startswith("file://"):
        return Path(item.removeprefix("file://"))
    if "://" in item:
        return None
    return Path(item)


def main(out_dir: Path) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = pip_settings()
    mounts: dict[Path, str] = {}  # host path -> path in the build

    def inside(path: Path) -> Path:
        # An index's pages link to files beside it (../../files/...): mount the index's parent.
        host = path.parent if path.name == "simple" else path
        mounts.setdefault(host, f"{MOUNT_ROOT}/{len(mounts)}-{host.name}")
        return Path(mounts[host]) / path.relative_to(host) if host != path else Path(mounts[host])

    lines = ["[global]"]
    for key, value in sorted(settings.items()):
        if key in PATH_KEYS:
            items = []
            for item in value.split():
                path = local_path(item)
                if path is None:
                    items.append(item)
                elif path.exists():
                    moved = inside(path.resolve())
                    items.append(f"file://{moved}" if item.startswith("file://") else str(moved))
                else:
                    print(f"pip_sources: skipping {key} {item}: not on this machine", file=sys.stderr)
            value = " ".join(items)
            if not value:
                continue
        lines.append(f"{key} = {value}")
    (out_dir / "pip.conf").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"--volume={out_dir.resolve()}:{MOUNT_ROOT}/conf:ro")
    for host, target in mounts.items():
        print(f"--volume={host}:{target}:ro")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: pip_sources.py OUT_DIR", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(main(Path(sys.argv[1])))
