"""The layout's rules, read from the source: no import cycle, the core imports no project, and the
projects never import each other.

Layers: the core is every module of `zsl_jax` outside `projects/` and `tools/`; `zsl_jax.projects`
itself is a table of strings (short trainer/evaluator names) that the core may read; `zsl_jax.tools`
is the command layer above everything. Function-local imports count as much as top-level ones.
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "zsl_jax"


def _module_name(path):
  parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _modules():
  return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(path, modules):
  """zsl_jax modules that `path` imports (a `from pkg import name` of a submodule counts as that module)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.startswith("zsl_jax"))
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("zsl_jax") and not node.level:
      for alias in node.names:
        sub = f"{node.module}.{alias.name}"
        found.add(sub if sub in modules else node.module)
  return {m for m in found if m in modules}


@pytest.fixture(scope="module")
def graph():
  modules = _modules()
  return {name: _imports(path, modules) for name, path in modules.items()}


def _layer(module):
  parts = module.split(".")
  if len(parts) >= 3 and parts[1] == "projects":
    return f"project:{parts[2]}"
  if module == "zsl_jax.projects":
    return "registry"
  if len(parts) >= 2 and parts[1] == "tools":
    return "tools"
  return "core"


def test_the_layout_has_both_projects(graph):
  layers = {_layer(m) for m in graph}
  assert {"core", "tools", "registry", "project:hgr", "project:attr"} <= layers
  for expected in ("zsl_jax.projects.hgr.trainer", "zsl_jax.projects.attr.models.dazle", "zsl_jax.sharding",
                   "zsl_jax.contracts"):
    assert expected in graph, expected


def test_no_import_cycle(graph):
  """Tarjan's strongly connected components: every component must be a single module."""
  index, low, stack, on_stack, cycles = {}, {}, [], set(), []
  counter = [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1 or v in graph[v]:
        cycles.append(sorted(component))

  for v in graph:
    if v not in index:
      visit(v)
  assert not cycles, f"import cycles: {cycles}"


def test_core_imports_no_project_and_projects_not_each_other(graph):
  bad = []
  for module, imported in graph.items():
    src = _layer(module)
    for target in imported:
      dst = _layer(target)
      if src == "core" and (dst.startswith("project:") or dst == "tools"):
        bad.append(f"core {module} -> {target}")
      if src.startswith("project:") and dst.startswith("project:") and dst != src:
        bad.append(f"{module} -> {target} (another project)")
      if src.startswith("project:") and dst == "tools":
        bad.append(f"{module} -> {target} (the command layer)")
  assert not bad, "\n".join(bad)
