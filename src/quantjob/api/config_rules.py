"""Rules on a modelslim_v1 config that the worker used to find only once it ran: each is a plain
function from the config to problems, called by ``quantjob.api.check.resolve``.

- ``lm_head`` named in an ``include`` (quantjob keeps it float);
- the brace lists of all the config's patterns together past ``MAX_CONFIG_EXPANDED_CHARS``.
"""

from __future__ import annotations

from quantjob.api.globs import (
    MAX_CONFIG_EXPANDED_CHARS,
    expansion_size,
    names_literally,
    pattern_error,
)
from quantjob.api.model_types import LM_HEAD
from quantjob.api.modelslim import ModelslimConfig
from quantjob.api.problems import Problem
from quantjob.api.processor_registry import smoothing_classes


def lm_head_in_include(config: ModelslimConfig, prefix: str) -> list[Problem]:
    """``include`` may not name the lm_head: quantjob leaves it float, so the request cannot be met."""
    return [Problem(f"{prefix}{path}.include", f"quantizing {LM_HEAD} is not supported; it stays float "
                                               f"(remove {LM_HEAD!r} from include)")
            for path, lq in config.linear_quants() if names_literally(lq.include, LM_HEAD)]


def pattern_budget(config: ModelslimConfig, prefix: str) -> list[Problem]:
    """The patterns of one config together expand to at most ``MAX_CONFIG_EXPANDED_CHARS``."""
    entries: list[tuple[str, list[str]]] = []
    for path, lq in config.linear_quants():
        entries += [(f"{path}.include", lq.include), (f"{path}.exclude", lq.exclude)]
    for index, proc in enumerate(config.spec.process):
        if isinstance(proc, smoothing_classes()):
            entries += [(f"spec.process[{index}].include", proc.include),
                        (f"spec.process[{index}].exclude", proc.exclude)]
    total = 0
    for path, patterns in entries:
        for position, pattern in enumerate(patterns):
            if pattern_error(pattern) is not None:
                continue  # already reported where it was parsed
            total += expansion_size(pattern)[1]
            if total > MAX_CONFIG_EXPANDED_CHARS:
                return [Problem(f"{prefix}{path}[{position}]",
                                f"the include/exclude patterns of this config expand to more than "
                                f"{MAX_CONFIG_EXPANDED_CHARS} characters together; use wildcards instead of "
                                "long brace lists")]
    return []
