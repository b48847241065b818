"""The shape of the package: the import graph of zs_kernels (every import statement, lazy ones
inside functions included) is acyclic and stays inside the back end, and CPU users never import
triton."""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import zs_kernels
from zs_kernels import compile_check

PACKAGE = pathlib.Path(zs_kernels.__file__).parent


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_names(name: str, path: pathlib.Path) -> set[str]:
    """Absolute names ``path`` imports: ``import a.b`` gives ``a.b``; ``from X import y`` gives
    ``X.y`` when that is a module of ours, else ``X``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    known = modules()
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module → the zs_kernels modules it imports (edges to the named modules only, not to the
    parent packages Python also runs)."""
    known = modules()
    return {name: set(imported_names(name, path)) & set(known) for name, path in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for successor in sorted(graph[node]):
            if state.get(successor) == "open":
                return stack[stack.index(successor) :] + [successor]
            if successor not in state:
                cycle = visit(successor)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_graph_sees_the_expected_edges():
    """The graph builder itself: relative, lazy and `from . import module` edges are found."""
    graph = import_graph()
    assert "zs_kernels.frames" in graph["zs_kernels.windowed_attention.reference"]
    assert "zs_kernels.corrected_qkv.layout" in graph["zs_kernels.corrected_qkv.triton"]
    assert "zs_kernels.back_project.vectorized" in graph["zs_kernels.corrected_qkv.vectorized"]
    assert "zs_kernels.windowed_attention" in graph["zs_kernels.reference"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_import_graph_is_acyclic():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# The GPU check is a tool, not library code (nothing imports it): its cascade check drives the
# front end's tiny SVD, and its peers come from zs_kernels.testing.
TOOLS = ("zs_kernels.compile_check", "zs_kernels.gpu_check")


def test_back_end_never_imports_the_front_end():
    for name, path in modules().items():
        for imported in imported_names(name, path):
            top = imported.split(".")[0]
            allowed = ("zerosmooth",) if name == "zs_kernels.gpu_check" else ()
            forbidden = top in ("zerosmooth", "diffusers", "transformers") and top not in allowed
            assert not forbidden, f"{name} imports {imported}"


def test_nothing_in_the_library_imports_the_build_check_or_the_test_helpers():
    for name, edges in import_graph().items():
        assert not edges & set(TOOLS), name
        if name not in ("zs_kernels.testing", "zs_kernels.gpu_check"):
            assert "zs_kernels.testing" not in edges, name


def test_only_triton_modules_import_triton():
    for name, path in modules().items():
        if any(imported.split(".")[0] == "triton" for imported in imported_names(name, path)):
            assert name.endswith(".triton") or name in (
                "zs_kernels._triton_common", "zs_kernels.compile_check", "zs_kernels.byte_count"
            ), name


def test_cpu_users_never_import_triton():
    code = (
        "import sys, torch, zs_kernels\n"
        "q = torch.randn(1, 1, 6, 4)\n"
        "zs_kernels.windowed_attention(q, q, q, window=4, stride=2)\n"
        "zs_kernels.corrected_qkv(torch.randn(1, 4, 2, 4), torch.randn(1, 2, 2, 6), torch.randn(6, 4), scale=2,"
        " kv_kind='box_left')\n"
        "zs_kernels.back_project(q, q[:, :, ::2], 'sample', 2, frame_dim=2)\n"
        "assert 'triton' not in sys.modules, 'triton was imported'\n"
    )
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    environment["CUDA_VISIBLE_DEVICES"] = ""
    done = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_compile_check_builds_every_kernel_module():
    """compile_check's op list is exactly the ops that have a Triton module, so a kernel can
    neither be skipped nor listed without existing (the build step imports each one)."""
    with_kernels = {path.parent.name for path in PACKAGE.glob("*/triton.py")}
    assert set(compile_check.KERNEL_OPS) == with_kernels == {"windowed_attention", "corrected_qkv"}
