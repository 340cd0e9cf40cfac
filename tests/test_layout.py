"""Which code may import what, read with `ast`: nothing is imported, and imports inside functions count too."""
import ast
from pathlib import Path

from harness import ROOT

PACKAGE = ROOT / "mpesa_agent"
# The modules of the agent processes (adk web / adk run, and the MCP server on the same tools); the
# callback server runs in another process.
AGENT_PROCESS = [PACKAGE / name for name in ("agent.py", "prompts.py", "tools.py", "tracking.py", "config.py",
                                             "a2a_server.py")] + [
    path for folder in ("offline_model", "payments", "daraja", "mcp") for path in sorted((PACKAGE / folder).rglob("*.py"))]
DEVELOPMENT = ("harness", "bench", "reliability", "tests")  # and the top-level test_*.py modules
DOING_IO = ("requests", "urllib3", "urllib.request", "http", "socket", "sqlite3", "flask", "werkzeug", "cheroot", "gevent",
            "subprocess", "threading", "asyncio", "mpesa_agent.daraja", "mpesa_agent.server", "mpesa_agent.tools",
            "mpesa_agent.tracking", "mpesa_agent.simulator", "mpesa_agent.agent")


def imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in `path`, relative ones resolved; `from a import b` gives a and a.b."""
    package = path.relative_to(root).parent.parts
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            parts = list(package[:len(package) - node.level + 1]) if node.level else []
            base = ".".join(parts + ([node.module] if node.module else []))
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{alias.name}") for alias in node.names
                                              if alias.name != "*"]
    return found


def violations(paths, forbidden, root: Path = ROOT) -> list[str]:
    """`file:line imports module` for each import of a forbidden module (or one inside it)."""
    return [f"{path.relative_to(root)}:{line} imports {name}" for path in paths for line, name in imports(path, root)
            if any(name == bad or name.startswith(bad + ".") for bad in forbidden)]


def test_the_agent_process_imports_nothing_from_the_callback_server():
    assert len(AGENT_PROCESS) > 10 and all(path.exists() for path in AGENT_PROCESS)
    found = violations(AGENT_PROCESS, ("mpesa_agent.server",))
    assert not found, "\n".join(found)


def test_the_cli_reaches_the_server_over_http_only():
    found = violations([PACKAGE / "cli.py"], ("mpesa_agent.server", "mpesa_agent.simulator"))
    assert not found, "\n".join(found)


def test_the_shipped_package_imports_no_development_code():
    paths = sorted(PACKAGE.rglob("*.py"))
    development = DEVELOPMENT + tuple(path.stem for path in ROOT.glob("test_*.py"))
    found = violations(paths, development)
    assert not found, "\n".join(found)


def test_the_payment_domain_does_no_io():
    found = violations(sorted((PACKAGE / "payments").rglob("*.py")), DOING_IO)
    assert not found, "\n".join(found)


def test_the_checks_see_absolute_relative_and_nested_imports(tmp_path):
    bad = tmp_path / "mpesa_agent" / "payments" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from ..server import store\nfrom .. import server\nimport mpesa_agent.server.manager\n"
                   "from . import states\n\ndef later():\n    import sqlite3\n")
    assert violations([bad], ("mpesa_agent.server",), tmp_path) == [
        "mpesa_agent/payments/bad.py:1 imports mpesa_agent.server",
        "mpesa_agent/payments/bad.py:1 imports mpesa_agent.server.store",
        "mpesa_agent/payments/bad.py:2 imports mpesa_agent.server",
        "mpesa_agent/payments/bad.py:3 imports mpesa_agent.server.manager"]
    assert violations([bad], DOING_IO, tmp_path)[-1] == "mpesa_agent/payments/bad.py:7 imports sqlite3"
    assert violations([bad], ("mpesa_agent.payments.state",), tmp_path) == []  # a prefix of a name is not a match
