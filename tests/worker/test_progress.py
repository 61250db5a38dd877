"""Progress events cross the launcher's pipe and come out as the same calls on the terminal side."""

from __future__ import annotations

import io
import sys

from quantjob.worker.group.device import parse_devices
from quantjob.worker.group.launcher import launch
from quantjob.worker.progress import PIPE_MARKER, PipeProgress, replay_event


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def start(self, total_layers: int, resumed_from: int = 0) -> None:
        self.calls.append(("start", total_layers, resumed_from))

    def layer_done(self, done: int, total: int, layer_error: float | None) -> None:
        self.calls.append(("layer", done, total, layer_error))

    def finish(self, ok: bool, message: str = "") -> None:
        self.calls.append(("finish", ok, message))


def test_pipe_events_replay_to_the_same_calls() -> None:
    stream = io.StringIO()
    sender = PipeProgress(stream)
    sender.start(3, 1)
    sender.layer_done(1, 3, 0.125)
    sender.layer_done(2, 3, None)
    sender.finish(False, "rank 1 lost")
    receiver = Recorder()
    lines = stream.getvalue().splitlines()
    assert all(line.startswith(PIPE_MARKER) for line in lines)
    assert all(replay_event(line, receiver) for line in lines)
    assert receiver.calls == [("start", 3, 1), ("layer", 1, 3, 0.125), ("layer", 2, 3, None),
                              ("finish", False, "rank 1 lost")]
    assert not replay_event("an ordinary log line", receiver)


def test_launcher_renders_rank_progress_and_keeps_it_out_of_the_log(tmp_path, caplog) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(
        "import os\n"
        "from quantjob.worker.progress import default_progress\n"
        "from quantjob.worker.group.distributed import ProcessGroup\n"
        "hook = default_progress(ProcessGroup(int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])))\n"
        "print('hello from', os.environ['RANK'], flush=True)\n"
        "if hook is not None:\n"
        "    hook.start(2); hook.layer_done(1, 2, 0.5); hook.layer_done(2, 2, 0.25); hook.finish(True, 'done')\n")
    out = io.StringIO()
    caplog.set_level("INFO", logger="quantjob.worker")
    code = launch([], parse_devices("cpu:0,1"), out=out, program=[sys.executable, str(worker)])
    assert code == 0
    text = out.getvalue()
    assert "[rank 0] hello from 0" in text and "[rank 1] hello from 1" in text
    assert PIPE_MARKER.strip() not in text  # events are rendered, never printed raw
    assert "layer 1/2 done (relative output error 5.000e-01" in caplog.text
    assert "layer 2/2 done" in caplog.text


def test_default_progress_in_a_quantjob_pod_logs_and_patches(monkeypatch, tmp_path) -> None:
    from quantjob.operator.certificates import write_self_signed
    from quantjob.worker.group.distributed import ProcessGroup
    from quantjob.worker.progress import Fanout, TerminalProgress, default_progress
    from quantjob.worker.progress_k8s import KubernetesProgress

    # the projected token volume the operator mounts: a token and the cluster CA
    (tmp_path / "token").write_text("x")
    write_self_signed(tmp_path / "ca", ["127.0.0.1"]).certfile.rename(tmp_path / "ca.crt")
    monkeypatch.delenv("QUANTJOB_PROGRESS_PIPE", raising=False)
    monkeypatch.setenv("QUANTJOB_PROGRESS_CONFIGMAP", "qwen2-w8a8-progress")
    monkeypatch.setenv("QUANTJOB_NAMESPACE", "ml")
    monkeypatch.setenv("QUANTJOB_SERVICE_ACCOUNT_DIR", str(tmp_path))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "9")
    hook = default_progress(ProcessGroup(0, 4))
    assert isinstance(hook, Fanout)
    assert [type(h) for h in hook.hooks] == [TerminalProgress, KubernetesProgress]
    assert default_progress(ProcessGroup(1, 4)) is None  # only rank 0 reports
    monkeypatch.delenv("QUANTJOB_PROGRESS_CONFIGMAP")
    assert isinstance(default_progress(ProcessGroup(0, 1)), TerminalProgress)

