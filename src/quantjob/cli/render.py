"""``quantjob render -f quantjob.yaml``: print the objects the operator would create, as a YAML stream.

No cluster needed: for review and GitOps diffs. The objects of the first attempt are printed (a
restart creates the next attempt's Job and PodGroup, ``<name>-a2``, ...). Owner references are left
out (they need the live QuantJob's uid); the operator adds them when it creates the objects.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from quantjob.api.resource import KIND
from quantjob.api.yaml_input import MAX_BYTES, YamlProblem, load_documents, too_large


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("render", help="print the ConfigMap, Service, Job and RBAC of QuantJobs",
                                   description="Print the objects the operator creates for each QuantJob in "
                                               "the given files, without a cluster.")
    parser.add_argument("-f", "--filename", action="append", required=True, metavar="FILE",
                        help="QuantJob manifest(s); '-' reads stdin (repeatable, multi-document YAML)")
    parser.add_argument("--namespace", "-n", help="namespace for QuantJobs that name none")
    parser.add_argument("--worker-image", help="worker image for QuantJobs without spec.image")
    parser.add_argument("--npu-runtime-class", help="runtimeClassName of npu pods; '' for none")
    parser.add_argument("--gang-scheduling", choices=["none", "volcano", "coscheduling"],
                        help="the operator's default gang scheduler")
    parser.add_argument("--pod-defaults", metavar="FILE", help="the operator's pod defaults (YAML overlay)")
    parser.add_argument("--network-policy", action="store_true", help="include the per-QuantJob NetworkPolicy")
    parser.set_defaults(run=run)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMap's config.yaml) as readable ``|`` blocks."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _string)


class UnreadableYaml(ValueError):
    """A file ``render`` will not load (too large, nested too deep, an alias bomb, bad YAML)."""


def _documents(filename: str) -> list[tuple[str, Any]]:
    """The file's documents, read with the same bounds as ``quantjob validate`` (``api.yaml_input``)."""
    if filename == "-":
        data = sys.stdin.buffer.read(MAX_BYTES + 1)
    else:
        with open(filename, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    try:
        found = too_large(len(data)) or load_documents(data.decode("utf-8"))
    except UnicodeDecodeError:
        found = YamlProblem("not UTF-8 text")
    if isinstance(found, YamlProblem):
        where = f"{filename}:{found.line}" if found.line else filename
        raise UnreadableYaml(f"{where}: {found.message}")
    return [(f"{filename}[{index}]", doc) for index, doc in enumerate(found)]


def render(documents: list[tuple[str, Any]], settings: Any, namespace: str | None) -> tuple[list[dict], list[str]]:
    """Children of every QuantJob document, and error lines (``source: path: message``)."""
    from quantjob.operator.builders import build_children
    from quantjob.operator.review import review_quantjob

    objects: list[dict] = []
    errors: list[str] = []
    for source, doc in documents:
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            errors.append(f"{source}: not a {KIND} (kind: {doc.get('kind') if isinstance(doc, dict) else doc!r})")
            continue
        resolution = review_quantjob(doc, settings)
        for problem in resolution.problems:
            if problem.severity == "warning":
                print(f"{source}: {problem}", file=sys.stderr)
        if not resolution.ok or resolution.job is None:
            errors += [f"{source}: {p}" for p in resolution.problems if p.severity == "error"]
            continue
        if not resolution.job.metadata.get("name"):
            errors.append(f"{source}: metadata.name: required to name the children; add a name")
            continue
        objects += build_children(resolution.job, resolution, settings,
                                  resolution.job.metadata.get("namespace") or namespace)
    return objects, errors


def run(args: argparse.Namespace) -> int:
    from quantjob.operator.settings import SettingsError, load_settings

    try:
        pod_defaults = Path(args.pod_defaults).read_text(encoding="utf-8") if args.pod_defaults else None
        settings = load_settings(os.environ, {"worker_image": args.worker_image,
                                              "npu_runtime_class": args.npu_runtime_class,
                                              "gang_scheduling": args.gang_scheduling,
                                              "pod_defaults": pod_defaults,
                                              "network_policy": True if args.network_policy else None})
        documents = [doc for name in args.filename for doc in _documents(name)]
    except UnreadableYaml as error:
        print(f"quantjob: error: {error}", file=sys.stderr)
        return 2
    except (SettingsError, OSError, yaml.YAMLError) as error:
        print(f"quantjob render: {error}", file=sys.stderr)
        return 2
    objects, errors = render(documents, settings, args.namespace)
    for line in errors:
        print(line, file=sys.stderr)
    if errors:
        return 1
    sys.stdout.write(yaml.dump_all(objects, Dumper=_BlockDumper, sort_keys=False))
    return 0
