"""How much two busy cores slow each other on this machine, outside quantjob.

A plain decoder layer of the benchmark's shape (transformers' Llama layer, bf16, random weights,
one thread, one sample of ``seq`` tokens) runs forward ``iterations`` times alone, and then as one
of two processes released at the same moment, ``rounds`` times in turn. The factor is the pair's
mean time per forward over the lone process's: what a second rank costs every forward before any
code of ours runs (the cores' shared cache, memory bandwidth and the host's scheduling).
``bench_smooth`` takes it once per pair of runs and prints the speed-up two ranks could reach at
best with it: the 1-rank run's fixed cost paid once, its layer time halved and slowed by that factor.

``python -m bench.contention`` prints one measurement.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from bench.measure import thread_env
from bench.models import ANCHOR, ModelShape
from bench.runs import REPO_ROOT

ITERATIONS = 48
ROUNDS = 3
READY, GO = "ready", "go"


@dataclass(frozen=True)
class Contention:
    alone_ms: float        # mean per forward, one process
    pair_ms: float         # mean per forward over both processes of the pair

    @property
    def factor(self) -> float:
        return self.pair_ms / self.alone_ms


def _child(shape: ModelShape, seq: int, iterations: int) -> None:
    """One process: build the layer, warm up, say ``ready``; then for every ``go`` line, time
    ``iterations`` forwards and print the mean ms; until its input ends."""
    import time

    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads, num_hidden_layers=1,
                         vocab_size=shape.vocab)
    config._attn_implementation = "sdpa"
    layer = LlamaDecoderLayer(config, 0).to(torch.bfloat16)
    hidden = torch.randn(1, seq, shape.hidden, dtype=torch.bfloat16)
    positions = torch.arange(seq).unsqueeze(0)
    rotary = LlamaRotaryEmbedding(config)(hidden, positions)
    with torch.inference_mode():
        for _ in range(3):
            layer(hidden, position_ids=positions, position_embeddings=rotary)
        print(READY, flush=True)
        for line in sys.stdin:
            if line.strip() != GO:
                break
            start = time.perf_counter()
            for _ in range(iterations):
                layer(hidden, position_ids=positions, position_embeddings=rotary)
            print(f"{(time.perf_counter() - start) / iterations * 1e3:.3f}", flush=True)


def _release(procs: Sequence[subprocess.Popen[str]]) -> list[float]:
    """Let ``procs`` go at the same moment; each one's mean ms per forward."""
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(GO + "\n")
        proc.stdin.flush()
    times = []
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        try:
            times.append(float(line))
        except ValueError:
            raise RuntimeError(f"bench.contention: a child said {line!r} instead of its time") from None
    return times


def measure(shape: ModelShape = ANCHOR, seq: int = 512, iterations: int = ITERATIONS,
            rounds: int = ROUNDS) -> Contention:
    """``rounds`` times in turn: one process alone, then it and a second one at once (the order
    every ``bench_smooth`` pair runs its rows in); the factor of the summed means."""
    argv = [sys.executable, "-m", "bench.contention", "--child", "--seq", str(seq), "--iterations", str(iterations),
            "--hidden", str(shape.hidden), "--intermediate", str(shape.intermediate), "--heads", str(shape.heads),
            "--kv-heads", str(shape.kv_heads), "--vocab", str(shape.vocab)]
    procs = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=thread_env(1),
                              cwd=REPO_ROOT) for _ in range(2)]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != READY:
                raise RuntimeError(f"bench.contention: a child said {line!r} instead of {READY!r}")
        alone: list[float] = []
        pair: list[float] = []
        for _ in range(rounds):
            alone.extend(_release(procs[:1]))
            pair.extend(_release(procs))
        return Contention(sum(alone) / len(alone), sum(pair) / len(pair))
    finally:
        for proc in procs:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def best_speedup(wall_one: float, fixed_one: float, factor: float) -> float:
    """The 2-rank speed-up if the 1-rank run's fixed cost were paid once and its layer time
    (wall less fixed) halved exactly, each half slowed by ``factor``."""
    return wall_one / (fixed_one + (wall_one - fixed_one) / 2 * factor)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    parser.add_argument("--hidden", type=int, default=ANCHOR.hidden)
    parser.add_argument("--intermediate", type=int, default=ANCHOR.intermediate)
    parser.add_argument("--heads", type=int, default=ANCHOR.heads)
    parser.add_argument("--kv-heads", type=int, default=ANCHOR.kv_heads)
    parser.add_argument("--vocab", type=int, default=ANCHOR.vocab)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args(argv)
    shape = ModelShape(hidden=args.hidden, intermediate=args.intermediate, heads=args.heads, kv_heads=args.kv_heads,
                       vocab=args.vocab)
    if args.child:
        _child(shape, args.seq, args.iterations)
        return 0
    found = measure(shape, args.seq, args.iterations, args.rounds)
    print(f"plain decoder layer, {args.seq} tokens, 1 thread: alone {found.alone_ms:.1f} ms, "
          f"as one of two {found.pair_ms:.1f} ms per forward: x{found.factor:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
