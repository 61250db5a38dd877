"""The worker's exit codes: the contract between ``quantjob quantize`` and the operator's Job.

The operator's pod failure policy maps ``INPUT`` and ``USAGE`` to an immediate failure of the
QuantJob (a retry cannot fix a corrupt model or a bad config) and every other non-zero code to a
restart of the whole group, which resumes at the last committed layer.
"""

from __future__ import annotations

OK = 0
CRASH = 1   # anything unexpected, a lost peer, a collective timeout: worth a restart of the group
USAGE = 2   # bad flags or config, refused before any work
INPUT = 3   # bad input found by the worker (model, calibration, output path, non-finite values)

USER_ERRORS: tuple[int, ...] = (USAGE, INPUT)
