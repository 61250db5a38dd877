"""Adding a processor is one config class with one registration (``@processor``) plus its handler keyed
by that class: a fake one registered here appears in the pydantic union, the catalogue, the rules'
smoothing set, the statistics the loop gathers and the worker's table, with nothing else edited."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import pytest
from pydantic import TypeAdapter, ValidationError

from quantjob.api import catalogue, processor_registry
from quantjob.api.modelslim import LinearQuant, ModelslimConfig, OtherProcessor, Strict
from quantjob.api.processor_registry import processor, processor_union
from quantjob.api.smoothing_rules import smoothing_problems
from quantjob.worker.processors import HANDLERS, ProcessorEntry, implemented_names, processor_for


class FakeSmooth(Strict):
    type: Literal["fake_smooth", "fake_alias"] = "fake_smooth"
    strength: float = 0.5


def _noop(*_args: object) -> None:
    return None


@pytest.fixture
def registered() -> Iterator[type[FakeSmooth]]:
    processor("a fake smoothing processor", distributed=True, statistics=("minmax", "probes"),
              smoothing=True)(FakeSmooth)
    HANDLERS[FakeSmooth] = ProcessorEntry(_noop, lambda _e: True, lambda *_a: [])
    try:
        yield FakeSmooth
    finally:
        HANDLERS.pop(FakeSmooth, None)
        processor_registry.unregister(FakeSmooth)


def test_a_registered_processor_reaches_every_table(registered: type[FakeSmooth]) -> None:
    union = TypeAdapter(list[processor_union(OtherProcessor)])  # type: ignore[misc]
    parsed = union.validate_python([{"type": "fake_alias", "strength": 0.25}, {"type": "linear_quant",
                                                                              "qconfig": {"weight": {}}}])
    assert isinstance(parsed[0], FakeSmooth) and parsed[0].strength == 0.25
    assert isinstance(parsed[1], LinearQuant)
    entry = catalogue.lookup("processor", "fake_alias")
    assert entry is not None and entry.name == "fake_smooth"
    with pytest.raises(ValidationError, match="strenght"):  # its options are its fields, nothing else
        union.validate_python([{"type": "fake_smooth", "strenght": 0.25}])
    assert "fake_smooth" in catalogue.supported("processor", distributed=True)
    assert processor_registry.statistics_for(parsed) == {"minmax", "probes"}
    assert processor_registry.statistics_for(parsed[1:]) == {"minmax"}
    assert processor_for("fake_alias") is HANDLERS[FakeSmooth]
    assert "fake_smooth" in implemented_names()
    # a smoothing-like processor: the ordering rule applies to it with no edit to smoothing_rules
    config = ModelslimConfig.model_construct(spec=type("S", (), {"process": [parsed[1], parsed[0]]})())
    problems = smoothing_problems(config, "")
    assert [p.path for p in problems if "after the linear_quant" in p.message] == ["spec.process[1]"], problems


def test_taking_it_back_leaves_the_tables_as_they_were(registered: type[FakeSmooth]) -> None:
    processor_registry.unregister(FakeSmooth)
    try:
        assert catalogue.lookup("processor", "fake_smooth") is None
        assert "fake_smooth" not in implemented_names()
        with pytest.raises(ValueError, match="not implemented in the worker"):
            processor_for("fake_smooth")
    finally:
        processor("again", smoothing=True)(FakeSmooth)


def test_a_name_is_registered_once() -> None:
    class Twice(Strict):
        type: Literal["linear_quant"] = "linear_quant"

    with pytest.raises(ValueError, match="already registered"):
        processor("twice")(Twice)


def test_a_statistic_the_loop_cannot_gather_is_refused() -> None:
    with pytest.raises(ValueError, match="not gathered by the layer loop"):
        processor("hessian", statistics=("hessian",))  # type: ignore[arg-type]
