"""The package layout holds: the import contracts in pyproject.toml pass on the real tree, fail on
purpose-made bad code (a stage importing a stage, a library importing upwards, torch in core), and
the package has no import cycle at all (lazy imports inside functions included)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(project: Path) -> subprocess.CompletedProcess:
    """lint-imports over the `pipeline_tasks` found first on PYTHONPATH: the copy in `project`."""
    env = {"PYTHONPATH": str(project), "PATH": str(Path(sys.executable).parent)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(project / "pyproject.toml"), "--no-cache"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def copy_of_the_package(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "pipeline_tasks", tmp_path / "pipeline_tasks", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_real_tree_keeps_every_contract(copy_of_the_package):
    result = lint_imports(copy_of_the_package)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "bad_line", "broken_contract"),
    [
        # A stage borrowing another stage's code: it belongs in a library.
        ("evaluate.py", "from pipeline_tasks import train", "Stages are independent"),
        # A library importing a stage (upwards), even lazily inside a function.
        ("model/evaluation.py", "def _f():\n    from pipeline_tasks import register", "Layers"),
        # The model layer reaching up into serving.
        ("model/recommender.py", "from pipeline_tasks.serving import registry", "Layers"),
        # core pulling in the deep-learning stack.
        ("core/metrics.py", "import torch", "core and data stay free of the deep-learning stack"),
        # Airflow outside the orchestration layer.
        ("serving/registry.py", "import airflow", "Only ops (the Airflow task bodies) imports Airflow"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(copy_of_the_package, module, bad_line, broken_contract):
    path = copy_of_the_package / "pipeline_tasks" / module
    path.write_text(path.read_text() + f"\n\n{bad_line}\n")
    result = lint_imports(copy_of_the_package)
    assert result.returncode != 0, result.stdout[-3000:]
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(line.startswith(broken_contract) for line in broken), result.stdout[-3000:]


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm: every group of modules that import each other (directly or not)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            groups.append(group)

    for node in graph:
        if node not in index:
            visit(node)
    return groups


def test_the_package_has_no_import_cycle():
    import grimp

    graph = grimp.build_graph("pipeline_tasks", cache_dir=None)
    # A package's __init__ is not an import of its children; cycles are between modules.
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    cycles = [sorted(group) for group in strongly_connected(edges) if len(group) > 1]
    assert cycles == []


def test_the_cycle_finder_finds_a_cycle():
    """The check above can fail: two modules importing each other form one group."""
    assert [sorted(g) for g in strongly_connected({"a": {"b"}, "b": {"a"}, "c": {"a"}}) if len(g) > 1] == [["a", "b"]]


def test_no_module_is_long_without_saying_why():
    """~400 lines is what one sitting reads; a longer module says at its top why it stays whole."""
    long_and_silent = []
    for path in sorted((ROOT / "pipeline_tasks").rglob("*.py")):
        text = path.read_text()
        docstring = text.split('"""')[1] if text.startswith('"""') else ""
        if len(text.splitlines()) > 400 and "Longer than most modules" not in docstring:
            long_and_silent.append(f"{path.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    assert long_and_silent == []


# core's plumbing: a change there (a new constant, an error message) does not change any result.
PLUMBING = {"constants", "errors", "io", "params", "tracking", "stage_cli"}


def test_each_dvc_stage_depends_on_the_code_it_runs():
    """A DVC stage's code deps are its module and every library module it imports (lazily too),
    so an edit to a library re-runs exactly the stages that use it."""
    import grimp
    import yaml

    graph = grimp.build_graph("pipeline_tasks", cache_dir=None)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        module = f"pipeline_tasks.{name}"
        imported = {m for m in graph.find_upstream_modules(module) if m.rsplit(".", 1)[-1] not in PLUMBING and "." in m}
        wanted = {module.replace(".", "/") + ".py"} | {
            m.replace(".", "/") + ".py" for m in imported if (ROOT / (m.replace(".", "/") + ".py")).exists()
        }
        listed = {dep for dep in stage["deps"] if dep.startswith("pipeline_tasks/")}
        assert listed == wanted, (
            f"dvc.yaml stage {name}: missing {sorted(wanted - listed)}, extra {sorted(listed - wanted)}"
        )
