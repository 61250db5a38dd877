#!/usr/bin/env bash
# Entry point of the worker image: CANN's environment first, then `quantjob "$@"`.
#
# The operator gives the container `args` (quantize --model_path ...), never `command`, so this
# script runs in every worker pod. It sources CANN's set_env.sh files when the image has them (a
# CPU or CUDA image has none: nothing happens), and adds the Ascend driver's libraries when the
# driver is mounted from the host (pods started without Ascend's container runtime get the driver
# through host-path volumes in the operator's pod defaults). Variables already set are kept.
#
# The worker image installs it as its ENTRYPOINT, e.g.
#   COPY deploy/worker-entrypoint.sh /usr/local/bin/quantjob-entrypoint
#   ENTRYPOINT ["/usr/local/bin/quantjob-entrypoint"]
#   CMD ["quantize", "--help"]
set -e

ascend_home="${ASCEND_HOME:-/usr/local/Ascend}"
for script in \
    "${ASCEND_TOOLKIT_SET_ENV:-$ascend_home/ascend-toolkit/set_env.sh}" \
    "$ascend_home/nnal/atb/set_env.sh"; do
  if [ -f "$script" ]; then
    set +eu  # CANN's scripts read unset variables and may return non-zero
    # shellcheck disable=SC1090
    . "$script" >/dev/null
    set -e
  fi
done

driver="$ascend_home/driver/lib64"
if [ -d "$driver" ]; then
  export LD_LIBRARY_PATH="$driver/driver:$driver/common:$driver${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

exec quantjob "$@"
