"""docs/design.md is the design document the code cites: it exists in the repository, every file it
names exists, every code object it names is importable, and nothing cites the old out-of-tree notes.
Its seams hold: a processor's type, a format's name and a model family's names are written only at
their registration, and nothing is imported by a name pattern (these fail when a registration is spread again)."""

from __future__ import annotations

import ast
import importlib
import itertools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DESIGN = ROOT / "docs" / "design.md"


def test_every_path_the_design_names_exists() -> None:
    text = DESIGN.read_text(encoding="utf-8")
    paths = set(re.findall(r"`((?:src|tests|docs|charts|crds|deploy|bench|examples|\.ci)/[\w./-]+|Dockerfile)`", text))
    assert len(paths) > 10
    missing = sorted(path for path in paths if not (ROOT / path).exists())
    assert not missing, f"docs/design.md names files that do not exist: {missing}"


def test_every_code_object_the_design_names_exists() -> None:
    text = DESIGN.read_text(encoding="utf-8")
    names = set(re.findall(r"`(quantjob\.(?:api|operator|worker|cli|formats|families)(?:\.\w+)*)`", text))
    names |= {f"quantjob.worker.loop.runner.{n}" for n in re.findall(r"`runner\.(\w+)`", text)}
    names |= {f"quantjob.worker.group.distributed.ProcessGroup.{n}" for n in re.findall(r"`ProcessGroup\.(\w+)`", text)}
    assert len(names) > 8
    for name in sorted(names):
        parts = name.split(".")
        for split in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:split]))
            except ModuleNotFoundError:
                continue
            for attribute in parts[split:]:
                assert hasattr(obj, attribute), f"docs/design.md names {name}, which does not exist"
                obj = getattr(obj, attribute)
            break
        else:
            raise AssertionError(f"docs/design.md names {name}, which does not exist")


def test_code_and_docs_cite_the_design_in_the_repository() -> None:
    citing = [path.relative_to(ROOT) for folder in ("src", "tests", "docs", "bench", "charts")
              for path in (ROOT / folder).rglob("*") if path.is_file() and path.suffix in (".py", ".md", ".yaml", ".tpl")
              and "DESIGN.md" in path.read_text(encoding="utf-8", errors="replace") and path != Path(__file__)]
    citing += [Path("README.md")] if "DESIGN.md" in (ROOT / "README.md").read_text(encoding="utf-8") else []
    assert not citing, f"cite docs/design.md instead of DESIGN.md (not in the repository): {citing}"


def test_the_seams_table_gives_each_extension_one_edit_and_a_test() -> None:
    """Each row of the seams table (§2) names what to edit and a test that exists; the run options row
    is there (a new option is one field of ``RunOptions``, ``tests/unit/test_run_options.py``)."""
    text = DESIGN.read_text(encoding="utf-8")
    table = text[text.index("| to add | edit | derived from it | test |"):]
    rows = list(itertools.takewhile(lambda line: line.startswith("|"), table.splitlines()[2:]))
    assert rows, "docs/design.md has no seams table"
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == 4 and all(cells), row
        tests = re.findall(r"`(tests/[\w/]+\.py)`", cells[3])
        assert tests and all((ROOT / path).is_file() for path in tests), row
    assert any(row.startswith("| a run option |") and "RunOptions" in row and "test_run_options.py" in row
               for row in rows)


SRC = ROOT / "src" / "quantjob"


def _string_constants(name: str) -> set[str]:
    """The source files (relative to src/quantjob) holding ``name`` as a whole string constant."""
    found = set()
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(node, ast.Constant) and node.value == name for node in ast.walk(tree)):
            found.add(path.relative_to(SRC).as_posix())
    return found


# Where a registered name may also appear, and why (anything else is a registration spread again).
_PROCESSOR_ELSEWHERE = {
    "api/presets.py": "quant-type presets are configs written in msModelSlim's language",
    "api/crd.py": "'group' is the CRD's API group",
    "formats/compressed_tensors/writer.py": "'group' is compressed-tensors' per-group strategy",
}
_FORMAT_ELSEWHERE = {
    "api/catalogue.py": "a saver's catalogue line names the format it writes",
}


def test_a_processor_type_is_written_only_at_its_registration() -> None:
    from quantjob.api.processor_registry import registrations

    assert len(registrations()) >= 4
    for registration in registrations():
        for name in (registration.algorithm.name, *registration.algorithm.aliases):
            spread = _string_constants(name) - {"api/modelslim.py"} - set(_PROCESSOR_ELSEWHERE)
            assert not spread, f"processor type {name!r} is written outside its registration: {sorted(spread)}"


def test_a_format_is_named_only_in_its_package() -> None:
    from quantjob.formats import formats

    assert len(formats()) >= 2
    for fmt in formats():
        spread = {path for path in _string_constants(fmt.name) if not path.startswith(f"formats/{fmt.name}/")}
        spread -= set(_FORMAT_ELSEWHERE)
        assert not spread, f"output format {fmt.name!r} is named outside its package: {sorted(spread)}"


def _family_modules() -> dict[str, str]:
    """Each module of ``quantjob.families`` that defines a ``FAMILY`` (relative to src/quantjob) ->
    the model type of that family."""
    found = {}
    for path in sorted((SRC / "families").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "FAMILY" for t in node.targets)
               for node in tree.body):
            module = importlib.import_module(f"quantjob.families.{path.stem}")
            found[path.relative_to(SRC).as_posix()] = module.FAMILY.model_type
    return found


def test_a_family_is_written_only_in_its_module_and_registered_once() -> None:
    """Every family module is registered (one line in ``quantjob.families``), and its model type, its
    ``--model_type`` prefixes and its wrappers' model types are written in no other source file."""
    from quantjob.families import families

    modules = _family_modules()
    registered = [family.model_type for family in families()]
    assert len(registered) >= 8
    assert sorted(modules.values()) == sorted(registered), "a family module is not registered, or twice"
    for module, model_type in modules.items():
        family = next(f for f in families() if f.model_type == model_type)
        for name in (model_type, *family.names, *family.other_architectures, *family.wrappers):
            spread = _string_constants(name) - {module}
            assert not spread, f"model family {model_type!r}: {name!r} is written outside {module}: {sorted(spread)}"


def test_nothing_is_imported_by_a_name_pattern() -> None:
    patterned = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) \
                    == "import_module" and node.args and isinstance(node.args[0], ast.JoinedStr):
                patterned.append(path.relative_to(SRC).as_posix())
    # the CLI's subcommands are the one exception: `quantjob <name>` runs quantjob.cli.<name>
    assert sorted(patterned) == ["cli/__init__.py"], patterned


def test_the_worker_rooms_table_lists_every_module_where_it_is() -> None:
    """§2's table of the worker's sub-packages names each module of the rooms it lists, and the tree
    holds no worker module the table leaves out (a module moved or added updates the table)."""
    text = DESIGN.read_text(encoding="utf-8")
    table = text[text.index("| room | holds |"):]
    rows = list(itertools.takewhile(lambda line: line.startswith("|"), table.splitlines()[2:]))
    worker = ROOT / "src" / "quantjob" / "worker"
    rooms = {row.split("|")[1].strip().strip("`"): row.split("|")[2] for row in rows}
    packages = {"quantjob.worker." + path.parent.name for path in worker.glob("*/__init__.py")}
    assert set(rooms) == packages | {"quantjob.worker"}, "every sub-package of quantjob.worker has a row"
    for room, holds in rooms.items():
        folder = worker if room == "quantjob.worker" else worker / room.rsplit(".", 1)[1]
        named = set(re.findall(r"`(\w+)`", holds))
        missing = sorted(n for n in named if "." not in n and n != "main" and not (folder / f"{n}.py").exists())
        assert not missing, f"the rooms table puts {missing} in {room}, which has no such module"
    flat = sorted(path.stem for path in worker.glob("*.py") if path.stem != "__init__")
    assert flat == ["entry", "errors", "preflight", "progress", "progress_k8s"], (
        "a new worker module goes in one of the rooms (§2), not beside them")
