#!/usr/bin/env bash
# The worker image's ENTRYPOINT: Ascend CANN's environment when the image has CANN, then
# `quantjob "$@"`. The pods get `args` (`quantize --model_path ...`), so this runs in every pod;
# without arguments the image's CMD (`quantize --help`) applies.
#
# CANN's set_env.sh scripts (bash) put the toolkit's libraries on LD_LIBRARY_PATH and set the
# ASCEND_* variables torch_npu reads when it is imported; CPU and CUDA images have none of them and
# nothing changes. The Ascend driver's libraries are added when the driver is there (mounted by
# Ascend's container runtime or a host path). ASCEND_HOME names a CANN installed elsewhere.
set -e

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

exec quantjob "$@"
