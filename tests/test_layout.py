"""The package's shape (docs/architecture.md): no import circles, even through imports inside
functions; the pass-through path loads no subpackage; runtime-specific code stays in
runtimes/."""
import ast
import os

from conftest import REPO

PKG = os.path.join(REPO, "runc_grit")


def _modules():
    out = {}
    for dirpath, dirs, files in os.walk(PKG):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), REPO)[:-3].replace(os.sep, ".")
                out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = \
                    os.path.join(dirpath, f)
    return out


def _graph():
    mods = _modules()
    graph = {m: set() for m in mods}
    for mod, path in mods.items():
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + ["%s.%s" % (node.module, a.name) for a in node.names]
            for n in names:
                if n in mods and n != mod and not mod.startswith(n + "."):
                    graph[mod].add(n)
    return graph


def _cycles(graph):
    found, state = [], {}

    def visit(n, stack):
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                found.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m, stack + [m])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    return found


def test_no_import_circles():
    assert _cycles(_graph()) == []


def test_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_pass_through_path_loads_no_subpackage():
    g = _graph()
    reach, todo = set(), ["runc_grit.entry"]
    while todo:
        m = todo.pop()
        if m not in reach:
            reach.add(m)
            with open(_modules()[m]) as f:
                tree = ast.parse(f.read())
            # module-level imports only: what runs before main() decides
            for node in tree.body:
                if isinstance(node, ast.ImportFrom) and node.module:
                    todo += [x for x in [node.module] + ["%s.%s" % (node.module, a.name)
                                                         for a in node.names] if x in g]
                elif isinstance(node, ast.Import):
                    todo += [a.name for a in node.names if a.name in g]
    assert reach == {"runc_grit", "runc_grit.entry", "runc_grit.argv", "runc_grit.fastconf"}


def test_the_dispatcher_has_no_runtime_specific_branch():
    """intercept.py's code (not its docstring) names no runtime, CRIU or GPU step."""
    with open(os.path.join(PKG, "intercept.py")) as f:
        tree = ast.parse(f.read())
    tree.body = tree.body[1:] if isinstance(tree.body[0], ast.Expr) else tree.body
    words = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.add(node.id)
        elif isinstance(node, ast.Attribute):
            words.add(node.attr)
        elif isinstance(node, ast.alias):
            words.add(node.name)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            words.add(node.value)
    text = " ".join(words).lower()
    for word in ("runsc", "crun", "gvisor", "criu", "nvidia", "cuda", "gpu"):
        assert word not in text, word


def test_no_function_over_50_lines_in_runtimes():
    """runtimes/ holds flows made of small steps."""
    long = []
    for f in sorted(os.listdir(os.path.join(PKG, "runtimes"))):
        if f.endswith(".py"):
            with open(os.path.join(PKG, "runtimes", f)) as fh:
                tree = ast.parse(fh.read())
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > 50:
                        long.append("%s:%s (%d lines)" % (f, node.name, n))
    assert long == []


def test_spec_modifiers_live_in_oci():
    """Every change runc-grit makes to a spec is a modifier of oci/modifiers.py: nothing
    outside oci/ assigns into a spec's annotations or defines a modifier."""
    for dirpath, dirs, files in os.walk(PKG):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in files:
            p = os.path.join(dirpath, f)
            if not f.endswith(".py") or os.path.basename(dirpath) == "oci":
                continue
            with open(p) as fh:
                text = fh.read()
            assert 'spec["annotations"] =' not in text, p
            assert "def set_annotation" not in text and "def set_criu_config" not in text, p
