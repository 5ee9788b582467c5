"""kiq's import graph, read from the source: no module reaches itself, counting imports inside
functions (imports for type checking only are not edges), and the layers below the job runtime
never import it."""

from __future__ import annotations

import ast

from conftest import ROOT

PACKAGE = ROOT / "kiq"
RUNTIME = {"processor", "job", "registry", "activejob", "globalid", "serialize", "adapters", "client",
           "callbacks", "middleware", "testing"}


def edges(module: str, everywhere: bool = True) -> set[str]:
    """The kiq modules ``kiq.<module>`` imports: at module level, and with ``everywhere`` also
    inside functions; never in an ``if TYPE_CHECKING:`` block."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    nodes = ast.walk(tree) if everywhere else iter(tree.body)
    found: set[str] = set()
    skip = {id(node) for block in ast.walk(tree) if _type_checking(block) for node in ast.walk(block)}
    for node in nodes:
        if id(node) in skip:
            continue
        found |= {name for name in _kiq_modules(node) if (PACKAGE / f"{name}.py").exists()}
    found.discard(module)
    return found


def reached(module: str, everywhere: bool = True) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        for name in edges(todo.pop(), everywhere):
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


def modules() -> list[str]:
    return sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem not in ("__init__", "__main__"))


def test_no_module_imports_itself_through_others():
    cycles = sorted(
        (module, other) for module in modules() for other in edges(module)
        if module in reached(other)
    )
    assert not cycles, f"import cycles through: {cycles}"


def test_the_layers_below_the_job_runtime_never_import_it():
    """The scheduler, recovery and the fetcher run in the master or below the job runtime: reading
    payloads must not pull in job classes, arguments, global IDs or adapters."""
    below = ("payload", "scheduler", "recovery", "sweep", "fetch", "roundtrip", "watch", "lease", "ledger",
             "heartbeat", "keys", "connection")
    for module in below:
        assert not RUNTIME & reached(module), f"kiq.{module} imports {sorted(RUNTIME & reached(module))}"


def test_only_kiq_contrib_imports_it_or_a_framework():
    """kiq runs and enqueues without Django: only kiq.contrib's subpackages (and the dashboard's
    Django view, which a Django project imports) import a framework, and nothing else of kiq
    imports kiq.contrib."""
    allowed = {PACKAGE / "web" / "django.py"}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path in allowed:
            continue
        inside_contrib = path.relative_to(PACKAGE).parts[0] == "contrib"
        for name in _imported(ast.parse(path.read_text())):
            framework = name == "django" or name.startswith(("django.", "django_tasks"))
            assert inside_contrib or not (framework or name.startswith("kiq.contrib")), (
                f"{path.relative_to(ROOT)} imports {name}")


def _imported(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return names


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _kiq_modules(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name.split(".")[1] for alias in node.names if alias.name.startswith("kiq.")]
    if isinstance(node, ast.ImportFrom) and node.module == "kiq":
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kiq."):
        return [node.module.split(".")[1]]
    return []


def test_the_walker_sees_imports_inside_functions_and_skips_type_checking():
    assert "processor" not in edges("middleware") and "job" not in edges("middleware")
    assert "api" in edges("admin") and "api" not in edges("admin", everywhere=False)
