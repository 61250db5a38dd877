"""The run options are one table (``quantjob.api.run_options``): a new option is one field there and
reaches the CLI flags, the QuantJob spec (and its CRD), the pod's worker arguments and the worker's
job with no other edit."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field, create_model

from quantjob.api.crd import model_schema
from quantjob.api.modelslim import ModelslimConfig
from quantjob.api.presets import preset
from quantjob.api.resource import QuantJob, QuantJobSpec, QuantJobSpecFields
from quantjob.api.run_options import Option, RunOptions, camel, run_options, spec_fields, spec_path
from quantjob.cli.quantize import add_run_option_flags
from quantjob.operator.builders import worker_args
from quantjob.worker.entry import WorkerArgs, run_option_values

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))
from emulator import quantjob_manifest


class WithFakeOption(RunOptions):
    """RunOptions with one more option, as a contributor would add it: one field, nothing else."""

    fake_option: Annotated[int, Option("a fake option (default 3)", spec_description="a fake option")] = Field(
        3, ge=1)


def _parser(model: type[BaseModel]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_run_option_flags(parser, model)
    return parser


def _parse_pod_args(model: type[BaseModel], args: list[str]) -> dict[str, Any]:
    """The pod's ``quantize`` arguments parsed by the table's flags (the operator's own flags kept)."""
    parser = _parser(model)
    for flag in ("--config_path", "--device", "--rendezvous_timeout", "--collective_timeout"):
        parser.add_argument(flag)
    assert args[0] == "quantize"
    parsed = vars(parser.parse_args(args[1:]))
    return {name: value for name, value in parsed.items() if name in model.model_fields}


def _job(**spec: Any) -> QuantJob:
    return QuantJob.model_validate(quantjob_manifest(**spec))


def test_a_new_option_reaches_the_flags_the_spec_the_crd_the_pod_args_and_the_worker_job() -> None:
    parser = _parser(WithFakeOption)
    assert "a fake option (default 3)" in parser.format_help()
    parsed = parser.parse_args(["--model_path", "m", "--save_path", "s", "--fake_option", "5"])
    assert parsed.fake_option == 5
    assert parser.parse_args(["--model_path", "m", "--save_path", "s"]).fake_option == 3

    spec_model = create_model("QuantJobSpec", __base__=QuantJobSpecFields, **spec_fields(WithFakeOption))
    assert model_schema(spec_model)["properties"]["fakeOption"] == {  # the CRD's property
        "description": "a fake option", "minimum": 1, "type": "integer"}
    spec = spec_model.model_validate({**quantjob_manifest()["spec"], "fakeOption": 7})
    with pytest.raises(ValueError, match="fakeOption"):
        spec_model.model_validate({**quantjob_manifest()["spec"], "fakeOption": 0})  # the table's bound

    job = _job().model_copy(update={"spec": spec})
    args = worker_args(job, WithFakeOption)
    assert args[args.index("--fake_option") + 1] == "7"
    assert args[:args.index("--fake_option")] + args[args.index("--fake_option") + 2:] == worker_args(_job())

    again = WithFakeOption.model_validate(_parse_pod_args(WithFakeOption, args))
    worker_job = create_model("Job", __base__=WithFakeOption, config=(ModelslimConfig, ...))
    assert worker_job(**run_option_values(again), config=preset("w8a8")).fake_option == 7


def test_every_option_has_its_quantjob_field_with_the_same_default() -> None:
    for name, (field, option) in run_options().items():
        where = spec_path(name, option)
        if where is None:  # not a QuantJob field (the worker's default applies in a pod)
            continue
        model: Any = QuantJobSpec
        *parents, last = where.split(".")
        for part in parents:
            model = model.model_fields[part].annotation
        assert last in model.model_fields, (name, where)
        assert model.model_fields[last].default == field.default or field.is_required(), (name, where)
        if option.spec is None:
            assert where == camel(name)


def test_calibrate_all_experts_reaches_the_pod_and_the_worker() -> None:
    assert QuantJobSpec.model_fields["calibrateAllExperts"].default is False
    assert "--calibrate_all_experts" not in worker_args(_job())
    args = worker_args(_job(calibrateAllExperts=True))
    assert "--calibrate_all_experts" in args
    worker = WorkerArgs.model_validate(_parse_pod_args(WorkerArgs, args))
    assert worker.calibrate_all_experts is True
    assert run_option_values(worker)["calibrate_all_experts"] is True


def test_the_worker_job_takes_every_option_from_the_command_line() -> None:
    """The worker's job is the table's fields of the parsed command line, nothing copied by hand."""
    from quantjob.worker.loop.runner import WorkerJob

    argv = ["--model_path", "m", "--save_path", "s", "--calib_file", "c.jsonl", "--calib_samples", "5",
            "--max_length", "64", "--trust_remote_code", "False", "--model_type", "llama", "--overwrite",
            "--next_layer_input", "quantized", "--error_samples", "0", "--calibrate_all_experts"]
    parsed = _parser(RunOptions).parse_args(argv)
    args = WorkerArgs.model_validate({**vars(parsed), "quant_type": "w8a8"})
    job = WorkerJob(**run_option_values(args), config=preset("w8a8"))
    assert set(run_options()) <= set(WorkerJob.model_fields)
    assert {name: getattr(job, name) for name in run_options()} == {name: getattr(args, name)
                                                                   for name in run_options()}
    assert job.calib_samples == 5 and job.next_layer_input == "quantized" and job.calibrate_all_experts
