"""The package's shape: imports point inwards, no module imports itself back, and the
client libraries (the keyrotor-client distribution in client/) stay free of the server and its
stack. Run alone with `pytest tests/test_layout.py`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).resolve().parents[1] / "worker"
CLIENT = Path(__file__).resolve().parents[1] / "client" / "keyrotor_client"
SERVER_STACK = ("celery", "kombu", "sqlalchemy", "alembic", "fastapi", "starlette", "uvicorn")
# Each room and the rooms it may import; anything not listed may import anything.
ALLOWED = {
    "worker.core": {"worker.core"},
    "worker.client": {"worker.client", "worker.core"},
    "worker.store": {"worker.store", "worker.core"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(WORKER.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every module's imports of keyrotor modules, at any depth (inside functions too)."""
    paths = [p for p in WORKER.rglob("*.py") if "migrations" not in p.parts]
    modules = {module_name(p): p for p in paths}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    child = f"{node.module}.{alias.name}"
                    found.add(child if child in modules else node.module)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def cycle_from(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start -> ... -> start, if there is one."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(graph[node]):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_no_module_imports_itself_back() -> None:
    graph = imports()
    cycles = [" -> ".join(c) for m in graph if (c := cycle_from(graph, m))]
    assert cycles == []


def test_rooms_import_only_inwards() -> None:
    wrong = [
        f"{module} imports {target}"
        for module, targets in imports().items()
        for room, allowed in ALLOWED.items()
        if module == room or module.startswith(room + ".")
        for target in targets
        if not any(target == a or target.startswith(a + ".") for a in allowed)
    ]
    assert wrong == []


def test_the_top_level_stays_small() -> None:
    top = sorted(p.name for p in WORKER.glob("*.py"))
    assert len(top) <= 8, top


def test_client_libraries_load_without_the_server_stack() -> None:
    code = (
        "import sys\n"
        "import keyrotor_client, keyrotor_client.verifier, keyrotor_client.subscriber\n"
        "import keyrotor_client.events, keyrotor_client.webhooks, keyrotor_client.discovery\n"
        "import worker.client.verifier, worker.client.subscriber, worker.client.events\n"
        "import worker.client.signer\n"
        f"print(sorted(m for m in {SERVER_STACK!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_client_distribution_imports_nothing_of_the_server() -> None:
    paths = sorted(CLIENT.rglob("*.py"))
    assert paths, CLIENT
    wrong = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            else:
                continue
            wrong += [f"{path.name} imports {n}" for n in names if n.split(".")[0] == "worker"]
    assert wrong == []


def test_the_old_client_names_are_the_moved_modules_and_classes() -> None:
    import keyrotor_client.bounded
    import keyrotor_client.errors
    import keyrotor_client.events
    import keyrotor_client.subscriber
    import keyrotor_client.verifier

    import worker.client.events
    import worker.client.subscriber
    import worker.client.verifier
    import worker.core.bounded
    import worker.core.errors

    assert worker.client.events is keyrotor_client.events
    assert worker.client.subscriber is keyrotor_client.subscriber
    assert worker.client.verifier is keyrotor_client.verifier
    assert worker.core.bounded.BoundedDict is keyrotor_client.bounded.BoundedDict
    for name in ("KeyrotorError", "InvalidInput", "NotFound", "InvalidToken", "InvalidWebhook"):
        assert getattr(worker.core.errors, name) is getattr(keyrotor_client.errors, name), name
