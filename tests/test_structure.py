"""The shape of the code (#38): imports point one way, kinds decide rather than names, and the
tools that read a workdir load it without the trainer. Read from the source with `ast`: nothing
is imported or run, so this costs well under a second."""

import ast
import pathlib
import re

from research.paths import REPO_ROOT

RESEARCH = REPO_ROOT / "research"
# Where a family, an objective or a task kind is defined, comparing names is the definition.
NAME_DECISIONS_ALLOWED_IN = ("research/models.py", "research/objectives.py", "research/config.py",
                             "research/kinds/", "research/taskdefs.py")
NAME_DECISION = re.compile(r"(objective\.name|task\.name|family) *(==|!=| in )")
MAX_NAME_DECISIONS = 8
WORKDIR_TOOLS = ("generate", "evaluate", "chat", "convert")
# The research modules one may import inside a function, and why: an import there hides an
# edge of the graph, so each is named here.
LAZY_RESEARCH_IMPORTS = {
    # machine is read before jax is set up (XLA flags); matmul imports jax, only when asked.
    ("research.machine", "research.matmul"),
}


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO_ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def research_modules() -> dict[str, pathlib.Path]:
  return {module_name(p): p for p in sorted(RESEARCH.rglob("*.py"))}


def imported_modules(node: ast.AST, name: str, is_package: bool, known: set[str]) -> set[str]:
  """The research modules an import statement loads (a package's modules by their own names)."""
  if isinstance(node, ast.Import):
    candidates = [alias.name for alias in node.names]
  else:
    base = node.module or ""
    if node.level:  # relative: from the module's package, one level up per extra dot
      package = name.split(".") if is_package else name.split(".")[:-1]
      package = package[:len(package) - (node.level - 1)]
      base = ".".join(package + ([base] if base else []))
    # `from package import module` loads that module; `from module import name`, the module.
    candidates = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                  for alias in node.names]
  found = set()
  for candidate in candidates:
    while candidate and candidate not in known:
      candidate = candidate.rpartition(".")[0]
    if candidate:
      found.add(candidate)
  return found


def _with_packages(edges: set[str], name: str, known: set[str]) -> set[str]:
  """Importing a.b.c runs a/__init__.py and a/b/__init__.py first: those are edges too (but
  not a module's own packages, already being loaded when it runs)."""
  packages = set()
  for edge in edges:
    parts = edge.split(".")
    for i in range(2, len(parts)):
      package = ".".join(parts[:i])
      if package in known and not f"{name}.".startswith(f"{package}."):
        packages.add(package)
  return edges | packages


def every_import() -> tuple[dict[str, set[str]], list[tuple[str, str, int]]]:
  """module -> the research modules it imports anywhere (inside functions too), and the
  (module, imported module, line) of each import of a research module inside a function
  (the `if __name__ == "__main__":` block counts as top level: it runs only as a program)."""
  modules = research_modules()
  known = set(modules)
  graph, inside = {}, []
  for name, path in modules.items():
    tree = ast.parse(path.read_text(encoding="utf-8"))
    edges = set()
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        for inner in ast.walk(node):
          if isinstance(inner, (ast.Import, ast.ImportFrom)):
            inside.extend((name, m, inner.lineno)
                          for m in imported_modules(inner, name, path.name == "__init__.py", known))
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        edges |= imported_modules(node, name, path.name == "__init__.py", known)
    graph[name] = _with_packages(edges, name, known) - {name}
  return graph, sorted(set(inside))


def top_level_imports() -> dict[str, set[str]]:
  """module -> the research modules it imports at its top level (those under `if` and `try`
  included; the `if __name__ == "__main__":` block left out: it runs only as a program)."""
  modules = research_modules()
  known = set(modules)
  graph = {}
  for name, path in modules.items():
    tree = ast.parse(path.read_text(encoding="utf-8"))
    edges = set()
    for statement in tree.body:
      if isinstance(statement, ast.If) and "__main__" in ast.unparse(statement.test):
        continue
      for node in ast.walk(statement) if isinstance(statement, (ast.If, ast.Try)) else [statement]:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
          edges |= imported_modules(node, name, path.name == "__init__.py", known)
    graph[name] = edges - {name}
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan's algorithm)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
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
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def name_decisions() -> list[str]:
  """`path:line: text` of each line outside the allowed files that compares a family, an
  objective or a task by name (the grep of #38)."""
  found = []
  for folder in ("research", "experiments"):
    for path in sorted((REPO_ROOT / folder).rglob("*.py")):
      relative = path.relative_to(REPO_ROOT).as_posix()
      if relative.startswith(NAME_DECISIONS_ALLOWED_IN):
        continue
      for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if NAME_DECISION.search(line):
          found.append(f"{relative}:{number}: {line.strip()}")
  return found


def test_cycles_are_found_where_they_exist():
  assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert cycles({"a": {"b"}, "b": set()}) == []


def test_research_modules_import_one_way():
  graph = top_level_imports()
  assert "research.train" in graph["research.multiseed"]  # the graph is really read
  assert cycles(graph) == [], "import circles among research modules"


def test_no_circle_even_through_imports_inside_functions():
  graph, _ = every_import()
  assert "research.config" in graph["research.kinds"]  # the graph is really read
  assert "research.data" in graph["research.objectives"]  # a package's __init__ counts
  assert cycles(graph) == [], "import circles among research modules (imports in functions too)"


def test_research_modules_are_imported_at_the_top():
  _, inside = every_import()
  found = [f"{module} imports {imported} inside a function (line {line})"
           for module, imported, line in inside
           if (module, imported) not in LAZY_RESEARCH_IMPORTS]
  assert not found, "\n".join(found)


def test_kinds_decide_not_names():
  found = name_decisions()
  assert len(found) <= MAX_NAME_DECISIONS, "\n".join(found)


def test_tools_that_read_a_workdir_do_not_import_the_trainer():
  graph = top_level_imports()
  for tool in WORKDIR_TOOLS:
    path = RESEARCH / f"{tool}.py"
    every_import = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        every_import |= imported_modules(node, f"research.{tool}", False, set(graph))
    assert "research.train" not in every_import, f"research/{tool}.py imports research.train"
