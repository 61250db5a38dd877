#!/bin/bash -p
# The worker image's ENTRYPOINT: Ascend CANN's environment when the image has CANN, then
# `quantjob "$@"`. The pods get `args` (`quantize --model_path ...`), so this runs in every pod;
# without arguments the image's CMD (`quantize --help`) applies.
#
# CANN's set_env.sh scripts (bash) put the toolkit's libraries on LD_LIBRARY_PATH and set the
# ASCEND_* variables torch_npu reads when it is imported; CPU and CUDA images have none of them and
# nothing changes. The Ascend driver's libraries are added when the driver is there (mounted by
# Ascend's container runtime or a host path). ASCEND_HOME names a CANN installed elsewhere.
#
# Nothing in the pod's environment may make this script run other code (issue 27.4): `bash -p`
# (privileged mode) reads no BASH_ENV/ENV start-up file, imports no exported functions and ignores
# SHELLOPTS, BASHOPTS, CDPATH and GLOBIGNORE from the environment; bash is named by its absolute
# path (not looked up on PATH) and so, in the image, is the program it ends in. Admission reserves these variables
# (and PATH, LD_*, PYTHON*, ASCEND_HOME, ...) as well: quantjob.api.pod_layout.CODE_ENV.
set -e
unset -v BASH_ENV ENV

ascend_home="${ASCEND_HOME:-/usr/local/Ascend}"
for script in "${ascend_home}/ascend-toolkit/set_env.sh" "${ascend_home}/nnal/atb/set_env.sh"; do
    if [ -f "${script}" ]; then
        set +eu  # these scripts read unset variables and may end with a non-zero status
        # shellcheck disable=SC1090
        . "${script}" >/dev/null
        set -e
    fi
done

driver="${ascend_home}/driver/lib64"
if [ -d "${driver}" ]; then
    export LD_LIBRARY_PATH="${driver}/driver:${driver}/common:${driver}${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}"
fi

# The venv of the Dockerfile, by its path; outside the image (tests, a development checkout) the
# quantjob on PATH.
program=/opt/quantjob/bin/quantjob
[ -x "${program}" ] || program=quantjob
exec "${program}" "$@"
