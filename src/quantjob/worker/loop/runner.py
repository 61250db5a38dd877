"""The layer-wise loop (docs/design.md, section 4), written once for world size 1 and N.

Rank r owns global calibration samples ``shard_indices(n, r, W)`` for the whole run. Per decoder
layer: load its tensors (the next layer's load runs on a background thread), run the local shard
through it while observing every linear's inputs, reduce the statistics across ranks, run the
processors in config order, hand the records to the saver, and produce the next layer's inputs
(the float outputs, or the outputs of the layer rebuilt from its records). Every reduction is
exact or summed in global sample order, so the output does not depend on the world size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from quantjob.api import catalogue
from quantjob.api.modelslim import ModelslimConfig
from quantjob.api.processor_registry import statistics_for
from quantjob.api.run_options import RunOptions, identity_options, identity_values
from quantjob.worker.group.device import (
    limit_kernel_cache,
    reads_ahead_during_compute,
    release_memory,
    trim_host_heap,
)
from quantjob.worker.group.distributed import ProcessGroup, shard_indices
from quantjob.worker.group.threads import sum_of_squares
from quantjob.worker.loop.calibration import Calibration, load_calibration
from quantjob.worker.loop.finite import (
    check_activations,
    check_error,
    check_records,
    check_weights,
)
from quantjob.worker.loop.observers import (
    ActivationStats,
    Probes,
    observe_inputs,
    probes_per_sample,
    record_probes,
    reduce_stats,
)
from quantjob.worker.loop.phase_times import PhaseTimes
from quantjob.worker.loop.records import LayerOutput
from quantjob.worker.model.adapters import adapter_for
from quantjob.worker.model.checkpoint import Checkpoint, Prefetcher, TensorInfo, file_fingerprint
from quantjob.worker.model.decoder import (
    Skeleton,
    build_skeleton,
    layer_forward,
    materialise,
    quantized_layer,
    release,
)
from quantjob.worker.model.experts import count_routed, expert_modules, reduce_counts, set_all_tokens
from quantjob.worker.model.fp8 import fp8_blocks
from quantjob.worker.model.model_config import read_model_config
from quantjob.worker.preflight import check_layout, check_memory, extra_layer_names, preflight
from quantjob.worker.processors import LayerContext, processor_for
from quantjob.worker.processors.context import _no_reobserve
from quantjob.worker.progress import ProgressHook
from quantjob.worker.savers.provenance import PROVENANCE_FILE, provenance_record, rank_layout
from quantjob.worker.savers.save_path import check_save_path

log = logging.getLogger("quantjob.worker")

ERRORS_FILE = "quant_errors.json"


class WorkerJob(RunOptions):
    """Everything one run needs; the config is already resolved by ``quantjob.api.check.resolve``."""

    config: ModelslimConfig


@dataclass
class RunSummary:
    num_layers: int
    resumed_from: int
    samples: int
    tokens: int
    seconds: float
    errors: dict[str, Any] = field(default_factory=dict)   # the quant_errors.json this run wrote
    phases: dict[str, float] = field(default_factory=dict)  # this rank's seconds per phase (phase_times)
    # the output already held this run's complete result (a retried pod of a finished run): nothing
    # was computed or written, ``errors`` is empty and the earlier run's quant_errors.json stays
    already_complete: bool = False


SaverFactory = Callable[..., Any]


def run_id_for(job: WorkerJob, model_config: dict[str, Any], checkpoint: Checkpoint, calibration: Calibration) -> str:
    """A hash of everything that determines the output bytes (not the world size or the runner):
    the config, the model's config and weights (fingerprinted), the calibration token ids and the
    run's options. A resumed run with another of these is refused rather than mixed."""
    config = job.config.model_dump(mode="json")
    config["spec"].pop("runner", None)
    for saver in config["spec"]["save"]:
        saver["type"] = next((e.name for e in catalogue.SAVERS.values() if e.distributed_variant == saver["type"]),
                             saver["type"])
    identity = {
        "config": config, "model_config": model_config,
        "weights": sorted((f.name, file_fingerprint(f)) for f in checkpoint.files),
        "calibration": calibration.digest,
        **identity_values(job),  # the run options marked Option.identity in quantjob.api.run_options
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


class _Loop:
    """State of one run; each method is one step of the loop."""

    def __init__(self, job: WorkerJob, group: ProcessGroup, device: torch.device, skeleton: Skeleton,
                 checkpoint: Checkpoint, calibration: Calibration, times: PhaseTimes) -> None:
        self.job, self.group, self.device = job, group, device
        self.times = times
        self.skeleton, self.checkpoint = skeleton, checkpoint
        n = len(calibration.samples)
        self.local = shard_indices(n, group.rank, group.world_size)
        self.error_count = min(job.error_samples, n)
        self.error_local = [g for g in self.local if g < self.error_count]
        self.input_ids = {g: calibration.samples[g] for g in self.local}
        # Inputs still needed after a layer's first forward: the error samples (the quantized
        # error pass), or all of them when the next layer gets quantized outputs or a processor
        # may change the weights and observe again. The others are dropped as soon as their
        # output exists (at 64 samples of 512 x 1024 bf16 that is 56 MB less at every layer's peak).
        keep_all = job.next_layer_input == "quantized" or any(
            processor_for(proc.type).reobserves for proc in job.config.spec.process)
        self.kept_inputs = set(self.local) if keep_all else set(self.error_local)
        # the statistics the run's registered processors ask for (processor_registry): min/max
        # always; probe rows (a bounded, rank-independent subset of the inputs of each smoothing
        # site's first consumer) or every row of them (None per sample: "rows") on request
        self.num_samples = n
        wanted = statistics_for(job.config.spec.process)
        self.probing = bool(wanted & {"probes", "rows"})
        self.probes_per_sample: int | None = None if "rows" in wanted else probes_per_sample(n)
        self.settings = skeleton.config.to_dict()
        # MoE layers: tokens routed to each expert, reduced over all ranks (layer -> experts path -> counts)
        self.routed: dict[int, dict[str, list[int]]] = {}

    def embed(self) -> dict[int, torch.Tensor]:
        name = f"{self.skeleton.adapter.embed}.weight"
        with self.times.phase("embedding"):
            table = self.checkpoint.load([name], self.device)[name]
            check_weights({name: table}, None, self.checkpoint)
            hidden = {g: self.skeleton.embed(ids.to(self.device), table) for g, ids in self.input_ids.items()}
            del table
        return hidden

    def forward(self, index: int, layer: torch.nn.Module, hidden: dict[int, torch.Tensor],
                samples: list[int], *, keep: set[int] | None = None, collect: bool = True) -> dict[int, torch.Tensor]:
        """Outputs of ``samples``; with ``keep``, every other input is dropped once it has been used;
        without ``collect``, each output is dropped as soon as it exists (a pass run for what its
        hooks observe: the outputs would be one more copy of the hidden states at the layer's peak)."""
        out: dict[int, torch.Tensor] = {}
        for g in samples:
            output = layer_forward(self.skeleton, index, layer, hidden[g])
            if collect:
                out[g] = output
            del output
            if keep is not None and g not in keep:
                del hidden[g]
            trim_host_heap()
        return out

    def replay_forward(self, index: int, layer: torch.nn.Module,
                       hidden: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """A committed layer's float outputs (those the next steps need). A MoE layer runs every local
        sample, counting the tokens routed to each expert, so a resumed run reports them as well."""
        if not expert_modules(layer):
            needed = self.local if self.job.next_layer_input == "float" else self.error_local
            return self.forward(index, layer, hidden, needed, keep=self.kept_inputs)
        with count_routed(layer) as counts:
            out = self.forward(index, layer, hidden, self.local, keep=self.kept_inputs)
        self.routed[index] = reduce_counts(counts, self.group)
        return out

    def observe(self, index: int, layer: torch.nn.Module, linears: dict[str, torch.nn.Linear],
                hidden: dict[int, torch.Tensor], *, keep: set[int] | None = None, probed: Collection[str] = (),
                collect: bool = True) -> tuple[dict[str, ActivationStats], Probes, dict[int, torch.Tensor]]:
        """One pass of the local samples observing every linear's inputs: the statistics reduced over
        all ranks, this rank's probe rows of the ``probed`` linears (when a processor uses them) and
        the layer outputs (none without ``collect``). The first pass over a MoE layer also counts
        the tokens routed to each expert (over all ranks)."""
        probing: AbstractContextManager[Probes] = nullcontext({})
        if self.probing:
            probing = record_probes({name: linears[name] for name in linears if name in probed}, self.local,
                                    self.probes_per_sample, block=layer)
        count = index not in self.routed and bool(expert_modules(layer))  # MoE layers only: no collective else
        counting: AbstractContextManager[dict[str, torch.Tensor]] = count_routed(layer) if count else nullcontext({})
        with self.times.phase("observation"):
            set_all_tokens(layer, self.job.calibrate_all_experts)
            try:
                with observe_inputs(linears) as local_stats, probing as probes, counting as counts:
                    out = self.forward(index, layer, hidden, self.local, keep=keep, collect=collect)
            finally:
                set_all_tokens(layer, False)
            stats = reduce_stats(local_stats, self.group)
            if count:
                self.routed[index] = reduce_counts(counts, self.group)
        check_activations(stats, index)  # reduced: every rank stops here alike
        return stats, probes, out

    def process(self, index: int, prefix: str, layer: torch.nn.Module,
                hidden: dict[int, torch.Tensor]) -> tuple[LayerOutput, dict[int, torch.Tensor]]:
        """Observe, reduce, run the processors; returns the layer's records and its float outputs."""
        linears = {prefix + name: module for name, module in layer.named_modules()
                   if isinstance(module, torch.nn.Linear)}
        ctx = LayerContext(index, prefix, layer, linears, self.skeleton.adapter, group=self.group,
                           subgraphs=self.skeleton.adapter.subgraphs(self.settings, index),
                           num_samples=self.num_samples, config=self.job.config,
                           probes_per_sample=self.probes_per_sample)
        # probe rows are read at each smoothing site's first consumer (the consumers share one input)
        probed = {ctx.full_name(site.targets[0]) for site in ctx.subgraphs}

        def reobserve() -> None:
            if len(hidden) < len(self.local):  # a processor's entry lacks reobserves=True
                raise RuntimeError("spec.process: statistics of changed weights are needed, but a processor "
                                   "changed them without declaring reobserves")
            ctx.stats, ctx.probes, _ = self.observe(index, layer, linears, hidden, probed=probed, collect=False)
            ctx.modified = False

        ctx.reobserve = reobserve
        ctx.stats, ctx.probes, float_out = self.observe(index, layer, linears, hidden, keep=self.kept_inputs,
                                                        probed=probed)
        for proc in self.job.config.spec.process:
            entry = processor_for(proc.type)
            if ctx.modified and entry.needs_stats(proc):
                ctx.reobserve()
            with self.times.phase("processors"):
                entry.apply(proc, ctx)
        # ctx.reobserve closes over ctx: without this the cycle keeps the layer's records (its int8
        # codes), statistics and probe rows alive until Python's cyclic collector happens to run,
        # measured as ~125 MiB more held per MoE layer of bench_moe's model, layer after layer
        ctx.reobserve = _no_reobserve
        if self.job.next_layer_input == "float":  # no processor observes again: only the error samples'
            for g in [g for g in hidden if g not in self.error_local]:  # inputs are still needed
                del hidden[g]
        trim_host_heap()
        records = [ctx.records[name] for name in linears if name in ctx.records]
        check_records(records, index)
        taken = {f"{r.name}.weight" for r in records} | {f"{r.name}.bias" for r in records}
        float_tensors = {prefix + name: tensor.detach() for name, tensor in layer.state_dict().items()
                         if prefix + name not in taken}
        return LayerOutput(index, records, float_tensors), float_out

    def next_inputs(self, index: int, prefix: str, layer: torch.nn.Module, output: LayerOutput,
                    hidden: dict[int, torch.Tensor],
                    float_out: dict[int, torch.Tensor]) -> tuple[dict[int, torch.Tensor], float | None]:
        """The next layer's inputs and this layer's relative output error (None: nothing quantized)."""
        quantized = self.job.next_layer_input == "quantized"
        if not output.quantized and not quantized:
            return float_out, None
        samples = self.local if quantized else self.error_local
        with self.times.phase("quantized forward"):
            with quantized_layer(layer, prefix, output, self.device) as qlayer:
                trim_host_heap()  # the rebuild's scratch
                quant_out = self.forward(index, qlayer, hidden, samples)
            error = self.relative_error(float_out, quant_out) if output.quantized else None
        check_error(error, index)
        return (quant_out if quantized else float_out), error

    def relative_error(self, reference: dict[int, torch.Tensor], quantized: dict[int, torch.Tensor]) -> float | None:
        if self.error_count == 0:
            return None
        partials = {g: torch.tensor([sum_of_squares(quantized[g].double() - reference[g].double()),
                                     sum_of_squares(reference[g])], dtype=torch.float64) for g in self.error_local}
        total = self.group.ordered_sum(partials, self.error_count, 2)
        return float((total[0] / total[1]).sqrt()) if total[1] > 0 else 0.0

    def outer(self) -> dict[str, TensorInfo]:
        """The checkpoint's tensors outside the decoder layers (embedding, final norm, lm_head) and
        those of the layers stored after them (MTP layers, ``preflight.extra_layer_names``): they
        stay float and the saver copies them as they are, but FP8 block-scaled ones, which it writes
        dequantized (``TensorInfo.scale``; bf16, without their ``weight_scale_inv``)."""
        adapter = self.skeleton.adapter
        layers_prefix = adapter.layers + "."
        extra = extra_layer_names(adapter, self.settings, self.skeleton.num_layers, self.checkpoint)
        return {name: info for name, info in sorted(self.checkpoint.tensors.items())
                if not name.startswith(layers_prefix) or name in extra}

    def expert_report(self) -> list[dict[str, Any]]:
        """Per MoE layer: the tokens routed to each expert (all ranks) and the experts none reached."""
        prefix = self.skeleton.adapter.layer_prefix
        return [{"layer": index, "experts": f"{prefix(index)}{path}", "routed_tokens": counts,
                 "starved": [f"{prefix(index)}{path}.{e}" for e, count in enumerate(counts) if count == 0]}
                for index, per_path in sorted(self.routed.items()) for path, counts in sorted(per_path.items())]


def run_quantization(job: WorkerJob, group: ProcessGroup, device: torch.device, progress: ProgressHook | None = None,
                     *, open_saver_fn: SaverFactory | None = None,
                     model_config: dict[str, Any] | None = None) -> RunSummary:
    """Quantize ``job.model_path`` into ``job.save_path``; the same call on every rank.
    ``model_config``: the model's config.json as the entry point's checks read it (read here when
    None); the run reads the file no other time."""
    started = time.monotonic()
    limit_kernel_cache()
    times = PhaseTimes()
    if model_config is None:
        model_config = read_model_config(job.model_path)
    adapter = adapter_for(model_config, job.model_type, config_file=str(job.model_path / "config.json"))
    checkpoint = Checkpoint(job.model_path, fp8_blocks(model_config, str(job.model_path / "config.json")))
    preflight(job, checkpoint, adapter, model_config)
    check_save_path(job.save_path, job.model_path)
    skeleton = build_skeleton(job.model_path, adapter, device, trust_remote_code=job.trust_remote_code)
    check_layout(skeleton, checkpoint)
    calibration = load_calibration(job.calib_file, job.model_path, samples=job.calib_samples,
                                   max_length=job.max_length, vocab_size=model_config.get("vocab_size"),
                                   trust_remote_code=job.trust_remote_code)
    check_memory(job, checkpoint, skeleton, [int(ids.numel()) for ids in calibration.samples], group.world_size,
                 device)
    loop = _Loop(job, group, device, skeleton, checkpoint, calibration, times)
    num_layers = skeleton.num_layers
    if open_saver_fn is None:
        from quantjob.worker.savers import open_savers

        open_saver_fn = open_savers
    run_id = run_id_for(job, model_config, checkpoint, calibration)
    group.where = "opening the output"
    saver = open_saver_fn(job.config.spec.save, save_path=job.save_path, model_dir=job.model_path,
                          run_id=run_id, group=group, overwrite=job.overwrite, num_layers=num_layers)
    if getattr(saver, "already_complete", False):  # a retried pod of a finished run: nothing to redo
        if progress is not None and group.is_main:
            progress.start(num_layers)
            progress.layer_done(num_layers, num_layers, None)
            progress.finish(True, f"{job.save_path} already holds this run's complete output; nothing was rewritten")
        return RunSummary(num_layers, num_layers, len(calibration.samples),
                          sum(int(ids.numel()) for ids in calibration.samples), time.monotonic() - started,
                          already_complete=True)
    layer_of = {adapter.layer_prefix(i): i for i in range(num_layers)}
    prefetcher = Prefetcher(checkpoint, device,
                            verify=lambda key, tensors: check_weights(tensors, layer_of.get(key), checkpoint))
    report = progress if group.is_main else None
    times.add("start", time.monotonic() - started)
    try:
        committed = saver.committed_layers()
        if committed:
            log.info("resuming at layer %d of %d", committed, num_layers)
        if report:
            report.start(num_layers, committed)
        layer_errors = _run_layers(loop, saver, prefetcher, committed, report)
        table = {"metric": "relative_output_error", "samples": loop.error_count,
                 "next_layer_input": job.next_layer_input,
                 "layers": [{"layer": i, "quantized_linears": count, "relative_error": error}
                            for i, (count, error) in enumerate(layer_errors)]}
        experts = loop.expert_report()
        if experts:  # MoE: routed tokens per expert; starved experts named (also in the log)
            table["calibrate_all_experts"] = job.calibrate_all_experts
            table["experts"] = experts
            starved = [name for entry in experts for name in entry["starved"]]
            if starved and group.is_main:
                log.warning("%d routed experts got no calibration token: %s%s", len(starved),
                            ", ".join(starved[:8]), " ..." if len(starved) > 8 else "")
        group.where = "the finish (assembling the output)"
        with times.phase("finish"):
            saver.write_json(ERRORS_FILE, table)
            saver.write_json(PROVENANCE_FILE, provenance_record(
                config=job.config.model_dump(mode="json"), run_id=run_id, model_config=model_config,
                checkpoint=checkpoint, calibration_digest=calibration.digest, samples=len(calibration.samples),
                # the options of the run's identity, and whether the model's own code may have run
                options=job.model_dump(mode="json", include={*identity_options(type(job)), "trust_remote_code"}),
                world_size=group.world_size, runner=str(job.config.spec.runner), ranks=rank_layout(group, device)))
            saver.finish(loop.outer())
    except BaseException as error:
        saver.abort()
        if report:
            report.finish(False, str(error))
        raise
    finally:
        prefetcher.close()
    if report:
        report.finish(True, f"wrote {job.save_path}")
    tokens = sum(int(ids.numel()) for ids in calibration.samples)
    return RunSummary(num_layers, committed, len(calibration.samples), tokens, time.monotonic() - started, table,
                      times.seconds)


def _run_layers(loop: _Loop, saver: Any, prefetcher: Prefetcher, committed: int,
                report: ProgressHook | None) -> list[tuple[int, float | None]]:
    adapter, skeleton, times = loop.skeleton.adapter, loop.skeleton, loop.times
    num_layers = skeleton.num_layers
    names = [loop.checkpoint.names_under(adapter.layer_prefix(i)) for i in range(num_layers)]
    hidden = loop.embed()
    errors: list[tuple[int, float | None]] = []
    early = reads_ahead_during_compute(loop.device)  # else the next layer is read after this one's release
    with torch.inference_mode():
        for index in range(num_layers):
            loop.group.where = f"layer {index}"
            prefix = adapter.layer_prefix(index)
            has_next = index + 1 < num_layers
            with times.phase("loading"):
                tensors = prefetcher.take(prefix, names[index])
                if early and has_next:
                    prefetcher.submit(adapter.layer_prefix(index + 1), names[index + 1])
                layer = skeleton.layers[index]
                materialise(layer, prefix, tensors)
                del tensors
            if index < committed:  # replay: no observation, the records come back from the saver
                with times.phase("replay"):
                    output = saver.load_layer(index)
                    float_out = loop.replay_forward(index, layer, hidden)
            else:
                output, float_out = loop.process(index, prefix, layer, hidden)
                with times.phase("saving"):
                    saver.save(output)
            hidden, error = loop.next_inputs(index, prefix, layer, output, hidden, float_out)
            errors.append((len(output.quantized), error))
            del output, float_out
            with times.phase("release"):
                release(layer)
                release_memory(loop.device)
            if not early and has_next:  # read while the progress is reported and the commit runs
                prefetcher.submit(adapter.layer_prefix(index + 1), names[index + 1])
            if report:
                report.layer_done(index + 1, num_layers, error)
    return errors
