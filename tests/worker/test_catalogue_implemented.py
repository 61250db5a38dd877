"""Every catalogue entry marked implemented has its worker implementation, and the worker
implements nothing the catalogue does not list: an implemented=True entry without code fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantjob.api import catalogue
from quantjob.api.modelslim import Saver
from quantjob.api.processor_registry import registration
from quantjob.worker.group.distributed import ProcessGroup
from quantjob.worker.loop.observers import ACTIVATION_METHODS, WEIGHT_METHODS
from quantjob.worker.processors import HANDLERS, implemented_names, processor_for


@pytest.mark.parametrize("entry", catalogue.entries("processor"), ids=lambda e: e.name)
def test_processor_entries_match_the_worker(entry: catalogue.Algorithm) -> None:
    if entry.implemented:
        found = registration(entry.name)
        assert found is not None
        for name in (entry.name, *entry.aliases):
            assert processor_for(name) is HANDLERS[found.config]
    else:
        assert entry.name not in implemented_names()


@pytest.mark.parametrize("entry", catalogue.entries("observer"), ids=lambda e: e.name)
def test_observer_methods_match_the_worker(entry: catalogue.Algorithm) -> None:
    assert (entry.name in ACTIVATION_METHODS or entry.name in WEIGHT_METHODS) == entry.implemented


def test_the_worker_has_nothing_the_catalogue_lacks() -> None:
    assert set(implemented_names()) <= set(catalogue.supported("processor"))
    assert set(ACTIVATION_METHODS) | set(WEIGHT_METHODS) <= set(catalogue.supported("observer"))


@pytest.mark.parametrize("entry", [e for e in catalogue.entries("saver") if e.implemented], ids=lambda e: e.name)
def test_implemented_savers_open(entry: catalogue.Algorithm, tmp_path: Path) -> None:
    from quantjob.worker.savers import open_saver

    model = tmp_path / "model"
    model.mkdir()
    saver = open_saver(Saver(type=entry.name), save_path=tmp_path / "out", model_dir=model,
                       run_id="catalogue-check", group=ProcessGroup(), overwrite=False, num_layers=1)
    assert saver.committed_layers() == 0
    saver.abort()
