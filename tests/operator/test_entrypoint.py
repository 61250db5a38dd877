"""The worker image's entry point: CANN's environment, then ``quantjob "$@"`` (the pods give args only)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ENTRYPOINT = Path(__file__).resolve().parents[2] / "docker" / "worker-entrypoint.sh"


def run(tmp_path: Path, ascend_home: Path, **extra: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "quantjob"  # stands in for the real command: prints its args and environment
    fake.write_text('#!/bin/sh\necho "ARGS=$*"\nenv\n')
    fake.chmod(0o755)
    # run as the image does: the kernel reads the script's #! line (the ENTRYPOINT is the file itself)
    result = subprocess.run([str(ENTRYPOINT), "quantize", "--device", "npu"], capture_output=True, text=True,
                            check=True, env={"PATH": f"{bin_dir}:/usr/bin:/bin", "ASCEND_HOME": str(ascend_home), **extra})
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def test_the_environment_cannot_make_it_run_other_code(tmp_path: Path) -> None:
    """Issue 27.4: BASH_ENV, ENV, an exported function, SHELLOPTS (xtrace + PS4) or a PATH with
    another bash or quantjob first ran a user's script through the bash entry point."""
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.sh"
    evil.write_text(f"echo ran >> {marker}\n")
    other = tmp_path / "other-bin"
    other.mkdir()
    for program in ("bash",):  # `#!/usr/bin/env bash` took the first bash on PATH
        (other / program).write_text(f"#!/bin/sh\necho ran >> {marker}\n")
        (other / program).chmod(0o755)
    env = run(tmp_path, tmp_path / "no-ascend", BASH_ENV=str(evil), ENV=str(evil),
              **{"BASH_FUNC_ascend_home%%": f"() {{ echo ran >> {marker}; }}"},
              SHELLOPTS="xtrace", PS4=f"$(echo ran >> {marker})")
    assert env["ARGS"] == "quantize --device npu" and not marker.exists()
    result = subprocess.run([str(ENTRYPOINT), "quantize"], capture_output=True, text=True, check=True,
                            env={"PATH": f"{other}:{tmp_path / 'bin'}:/usr/bin:/bin"})
    assert "ARGS=quantize" in result.stdout and not marker.exists()


def test_without_cann_it_only_runs_quantjob(tmp_path: Path) -> None:
    env = run(tmp_path, tmp_path / "no-ascend")
    assert env["ARGS"] == "quantize --device npu" and "LD_LIBRARY_PATH" not in env


def test_sources_cann_and_adds_the_host_driver(tmp_path: Path) -> None:
    home = tmp_path / "Ascend"
    (home / "ascend-toolkit").mkdir(parents=True)
    # CANN's scripts read unset variables and may end non-zero; the entry point must survive both
    (home / "ascend-toolkit" / "set_env.sh").write_text(
        'export ASCEND_TOOLKIT_HOME="$ASCEND_HOME/ascend-toolkit/latest"\n'
        'export LD_LIBRARY_PATH="$ASCEND_TOOLKIT_HOME/lib64:$LD_LIBRARY_PATH"\n'
        'echo "$UNSET_THING" > /dev/null\nfalse\n')
    (home / "nnal" / "atb").mkdir(parents=True)
    (home / "nnal" / "atb" / "set_env.sh").write_text("export ATB_HOME_PATH=/atb\n")
    (home / "driver" / "lib64").mkdir(parents=True)
    env = run(tmp_path, home)
    assert env["ARGS"] == "quantize --device npu"
    assert env["ASCEND_TOOLKIT_HOME"] == f"{home}/ascend-toolkit/latest" and env["ATB_HOME_PATH"] == "/atb"
    driver = f"{home}/driver/lib64"
    assert env["LD_LIBRARY_PATH"].startswith(f"{driver}/driver:{driver}/common:{driver}:")
    assert f"{home}/ascend-toolkit/latest/lib64" in env["LD_LIBRARY_PATH"]
    assert os.access(ENTRYPOINT, os.X_OK)
