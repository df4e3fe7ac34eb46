"""The package layout is a stack: each module imports only from its own layer or the layers below it, and the
modules import each other without cycles. A new module must be placed in a layer here."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "ds01"
# Lowest first. A name is a module or a whole subpackage (dotted, below ds01).
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"", "errors", "reasons", "paths", "units", "labels", "names", "devicerequests", "records",
               "statefile", "daemon", "terminals"}),
    frozenset({"config", "eventlog", "identity", "engine", "nvml", "procfs", "overlay", "unixhttp", "iptables",
               "etcd"}),
    frozenset({"gpus", "jobs", "fleet"}),
    frozenset({"proxy", "exporter"}),
    frozenset({"ops"}),
    frozenset({"cli"}),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    if module == "":
        return 0
    for depth in range(module.count(".") + 1, 0, -1):
        prefix = ".".join(module.split(".")[:depth])
        for index, layer in enumerate(LAYERS):
            if prefix in layer:
                return index
    raise AssertionError(f"ds01.{module} is in no layer of tests/unit/test_layout.py: place it in one")


def _imports(path: Path) -> set[str]:
    """The ds01 modules `path` imports, anywhere in it (function-level imports too), without the ds01 prefix."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "ds01"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ds01":
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names
                      if (PACKAGE / Path(*node.module.split(".")[1:]) / f"{alias.name}.py").exists()
                      or (PACKAGE / Path(*node.module.split(".")[1:]) / alias.name / "__init__.py").exists()}
    return {name.removeprefix("ds01").removeprefix(".") for name in found}


def _graph() -> dict[str, set[str]]:
    return {_module_name(path): _imports(path) for path in PACKAGE.rglob("*.py")}


def test_no_module_imports_from_a_layer_above_it() -> None:
    upward = [f"ds01.{module} (layer {_layer(module)}) imports ds01.{target} (layer {_layer(target)})"
              for module, targets in sorted(_graph().items()) for target in sorted(targets)
              if _layer(target) > _layer(module)]
    assert upward == []


def test_modules_import_each_other_without_cycles() -> None:
    graph = _graph()
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path[path.index(module):], module))}"
        if module in done:
            return
        for target in graph.get(module, set()):
            if target != module and not module.startswith(f"{target}.") and target in graph:
                visit(target, (*path, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())


def test_the_policy_and_the_gate_stay_off_the_sdk_door() -> None:
    graph = _graph()
    for module in ("proxy.gate", "proxy.policy", "proxy.creates", "records", "labels"):
        assert "engine" not in graph[module], f"ds01.{module} imports the Docker SDK door"


# Each outside system has one door: the only modules that may import it.
DOORS = {
    "pwd": {"identity.nss"}, "grp": {"identity.nss"}, "docker": {"engine"}, "pynvml": {"nvml"},
    "ldap": {"identity.directory"}, "yaml": {"config.loader"}, "h11": {"proxy.http", "proxy.link"},
    "prometheus_client": {"exporter.metrics", "exporter.service"}, "etcd3gw": {"etcd"},
}


def _outside_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_each_outside_system_is_imported_through_its_door_only() -> None:
    strays = [f"ds01.{_module_name(path)} imports {system}, whose door is {', '.join(sorted(doors))}"
              for path in sorted(PACKAGE.rglob("*.py")) for system, doors in DOORS.items()
              if system in _outside_imports(path) and _module_name(path) not in doors]
    assert strays == []


# Outside programs that have one door too: the only module whose argument lists name them.
PROGRAM_DOORS = {"iptables": "iptables", "iptables-save": "iptables", "iptables-restore": "iptables",
                 "ip6tables": "iptables", "nft": "iptables"}


def test_each_outside_program_is_run_through_its_door_only() -> None:
    strays = [f"ds01.{_module_name(path)} names {node.value!r}, whose door is ds01.{PROGRAM_DOORS[node.value]}"
              for path in sorted(PACKAGE.rglob("*.py"))
              for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
              if isinstance(node, ast.Constant) and node.value in PROGRAM_DOORS
              and _module_name(path) != PROGRAM_DOORS[node.value]]
    assert strays == []
