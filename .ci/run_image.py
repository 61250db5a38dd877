"""Run a command in a built image the way a restricted pod runs it: read-only root, ``/tmp`` writable.

    python3 .ci/run_image.py IMAGE [--entrypoint] -- COMMAND...

``buildah run`` cannot make the root filesystem read-only, so this does what a container runtime
does, with util-linux and the kernel: it mounts the image (``buildah mount``), and in a new mount
and PID namespace (``unshare``) bind-mounts that root read-only, puts an empty tmpfs on ``/tmp``
(the pods' ``emptyDir``), fresh ``/proc``, a minimal ``/dev`` with a tmpfs ``/dev/shm``, a
read-only ``/sys`` and the host's ``/etc/hosts`` and ``/etc/resolv.conf`` (as the kubelet does);
then it changes root, drops to the image's ``USER`` (uid and gid, no supplementary groups, no
capabilities, ``no_new_privs``), enters its ``WORKDIR`` with exactly its ``ENV``, and executes the
command (after the image's ``ENTRYPOINT`` with ``--entrypoint``). Its exit code is the command's.
Must run as root.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BUILDAH = ["buildah", "--storage-driver", os.environ.get("STORAGE_DRIVER", "vfs")]
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
PR_SET_NO_NEW_PRIVS = 38


def image_config(image: str) -> dict:
    text = subprocess.run([*BUILDAH, "inspect", "--type", "image", image], check=True,
                          capture_output=True, text=True).stdout
    config: dict = json.loads(text)["OCIv1"]["config"]
    return config


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def prepare_root(image_root: Path, root: Path) -> None:
    """Inside the new mount namespace: the container's view of the file system at ``root``."""
    mount("--make-rprivate", "/")
    mount("--bind", str(image_root), str(root))
    mount("-o", "remount,bind,ro", str(root))
    mount("-t", "proc", "-o", "nosuid,nodev,noexec", "proc", str(root / "proc"))
    mount("-t", "tmpfs", "-o", "nosuid,nodev,mode=1777", "tmpfs", str(root / "tmp"))
    mount("-t", "tmpfs", "-o", "nosuid,mode=755", "tmpfs", str(root / "dev"))
    for name in DEVICES:
        (root / "dev" / name).touch()
        mount("--bind", f"/dev/{name}", str(root / "dev" / name))
    (root / "dev" / "shm").mkdir()
    mount("-t", "tmpfs", "-o", "nosuid,nodev,mode=1777", "tmpfs", str(root / "dev" / "shm"))
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        (root / "dev" / name).symlink_to(target)
    mount("--rbind", "/sys", str(root / "sys"))
    mount("-o", "remount,bind,ro", str(root / "sys"))
    for name in ("hosts", "resolv.conf"):
        if (root / "etc" / name).is_file() and Path("/etc", name).is_file():
            mount("--bind", "-o", "ro", f"/etc/{name}", str(root / "etc" / name))


def inner(image_root: str, root_dir: str, config_json: str, argv: list[str]) -> int:
    """PID 1 of the new namespaces: set up the root, then fork the command and wait for it.

    Every mount lives in this mount namespace only and goes with it.
    """
    config = json.loads(config_json)
    root = Path(root_dir)
    prepare_root(Path(image_root), root)
    user = (config.get("User") or "0:0").split(":")
    uid, gid = int(user[0]), int(user[1] if len(user) > 1 else user[0])
    env = dict(item.split("=", 1) for item in config.get("Env") or [])
    workdir = config.get("WorkingDir") or "/"
    pid = os.fork()
    if pid == 0:
        try:
            os.chroot(root)
            os.chdir(workdir)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)  # leaving uid 0 clears the permitted and effective capabilities
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
            path = env.get("PATH", "/usr/bin:/bin")
            program = argv[0] if "/" in argv[0] else next(
                (f"{d}/{argv[0]}" for d in path.split(":") if os.access(f"{d}/{argv[0]}", os.X_OK)), argv[0])
            os.execve(program, argv, env)
        except OSError as error:
            print(f"run_image: cannot start {argv}: {error}", file=sys.stderr)
            os._exit(127)
    while True:  # as PID 1, also reap orphans until the command itself ends
        done, status = os.wait()
        if done == pid:
            return os.waitstatus_to_exitcode(status)


def main(args: list[str]) -> int:
    if "--" not in args:
        print(__doc__, file=sys.stderr)
        return 2
    split = args.index("--")
    options, command = args[:split], args[split + 1:]
    use_entrypoint = "--entrypoint" in options
    image = next(item for item in options if not item.startswith("--"))
    config = image_config(image)
    argv = [*(config.get("Entrypoint") or [])] + command if use_entrypoint else command
    if not argv:
        print("run_image: nothing to run", file=sys.stderr)
        return 2
    container = subprocess.run([*BUILDAH, "from", "--pull-never", image], check=True,
                               capture_output=True, text=True).stdout.strip()
    try:
        image_root = subprocess.run([*BUILDAH, "mount", container], check=True,
                                    capture_output=True, text=True).stdout.strip()
        with tempfile.TemporaryDirectory(prefix="quantjob-root-") as root_dir:  # empty again afterwards
            done = subprocess.run(["unshare", "--mount", "--pid", "--fork", "--propagation", "private",
                                   sys.executable, __file__, "--inner", image_root, root_dir, json.dumps(config),
                                   *argv], check=False)
        return done.returncode
    finally:
        subprocess.run([*BUILDAH, "umount", container], check=False, capture_output=True)
        subprocess.run([*BUILDAH, "rm", container], check=False, capture_output=True)


if __name__ == "__main__":
    if len(sys.argv) > 4 and sys.argv[1] == "--inner":
        raise SystemExit(inner(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]))
    raise SystemExit(main(sys.argv[1:]))
