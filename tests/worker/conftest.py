"""Shared worker fixtures: tiny random models of each family and calibration files, built once per
session with fixed seeds (``quantjob.worker.model.demo``), plus an in-memory saver for loop tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quantjob.worker.errors import QuantJobError
from quantjob.worker.loop.records import LayerOutput
from quantjob.worker.model.demo import build_demo_model, write_calibration_jsonl


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``tiny_model(family="llama", layers=2, **build_demo_model kwargs) -> model dir``, cached."""
    cache: dict[tuple[Any, ...], Path] = {}

    def build(family: str = "llama", layers: int = 2, **kwargs: Any) -> Path:
        key = (family, layers, tuple(sorted(kwargs.items())))
        if key not in cache:
            path = tmp_path_factory.mktemp(f"model-{family}-{layers}")
            cache[key] = build_demo_model(path, family=family, num_layers=layers, **kwargs)
        return cache[key]

    return build


@pytest.fixture(scope="session")
def calib_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``calib_jsonl(num_samples=6, seed=0, ...) -> jsonl path`` of varied-length samples, cached."""
    cache: dict[tuple[Any, ...], Path] = {}

    def build(num_samples: int = 6, **kwargs: Any) -> Path:
        key = (num_samples, tuple(sorted(kwargs.items())))
        if key not in cache:
            path = tmp_path_factory.mktemp("calib") / "calib.jsonl"
            cache[key] = write_calibration_jsonl(path, num_samples, **kwargs)
        return cache[key]

    return build


class MemorySaver:
    """A saver that keeps every LayerOutput in memory (the saver interface, no files)."""

    def __init__(self, *, committed: int = 0, stored: dict[int, LayerOutput] | None = None,
                 fail_at: int | None = None, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.layers: dict[int, LayerOutput] = dict(stored or {})
        self.outer: dict[str, Any] | None = None
        self.json: dict[str, Any] = {}
        self.committed = committed
        self.fail_at = fail_at
        self.finished = self.aborted = False

    def committed_layers(self) -> int:
        return self.committed

    def load_layer(self, index: int) -> LayerOutput:
        return self.layers[index]

    def save(self, out: LayerOutput) -> None:
        if out.index == self.fail_at:
            raise QuantJobError(f"disk full at layer {out.index}")
        self.layers[out.index] = out

    def write_json(self, name: str, data: Any) -> None:
        self.json[name] = data

    def finish(self, source_tensors: Any) -> None:
        self.outer = dict(source_tensors)
        self.finished = True

    def abort(self) -> None:
        self.aborted = True


@pytest.fixture
def memory_saver() -> Callable[..., MemorySaver]:
    """``factory(**MemorySaver kwargs)``; use ``open_saver_fn=factory``; ``factory.last`` is the saver."""

    def factory(saver_cfg: Any = None, **kwargs: Any) -> MemorySaver:
        saver = MemorySaver(**{**factory.options, **kwargs})  # type: ignore[attr-defined]
        factory.last = saver  # type: ignore[attr-defined]
        return saver

    factory.options = {}  # type: ignore[attr-defined]
    factory.last = None  # type: ignore[attr-defined]
    return factory

