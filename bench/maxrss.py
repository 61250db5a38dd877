"""A small wrapper that runs a command and records its exact peak RSS: ``python -S maxrss.py OUT -- ARGV...``.

Why a wrapper: on Linux a child's ``ru_maxrss`` also counts the memory of the process that
started it (the high-water mark of the forked or vforked address space survives ``exec``), so a
benchmark process that holds torch and a model would inflate every child's figure. Started from
this wrapper (a bare interpreter, about 10 MB), the command's ``ru_maxrss`` is its own peak, or the
peak of the largest descendant it reaped. Writes ``{"pid", "returncode", "maxrss_bytes"}`` as
JSON to OUT and exits with the command's exit code. Standard library only, no site packages.
"""

import json
import os
import subprocess
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -S maxrss.py OUT.json -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    out, command = argv[0], argv[2:]
    process = subprocess.Popen(command)
    while True:
        try:
            _, status, usage = os.wait4(process.pid, 0)
            break
        except InterruptedError:
            continue
    code = os.waitstatus_to_exitcode(status)
    process.returncode = code
    with open(out, "w", encoding="utf-8") as handle:
        json.dump({"pid": process.pid, "returncode": code, "maxrss_bytes": usage.ru_maxrss * 1024}, handle)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
