"""The house: the README is a current front door, the docs' tables come from the committed
results, the package's imports go one way, and old module paths still import."""

import ast
import importlib
import re
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sae_lens_tokenized"
sys.path.insert(0, str(ROOT / "benchmarks"))

import render_results  # noqa: E402


def test_readme_is_a_front_door_whose_result_is_rendered_from_the_committed_json():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).splitlines()
    assert [line.split("#")[0].strip() for line in first_block] == ["./run.sh demo", "./run.sh test"]
    # the headline table is exactly what the renderer makes of benchmarks/results (re-render
    # with `python benchmarks/render_results.py --readme` after a new demo run)
    assert "<!-- results: demo -->" in text
    assert render_results.render_readme(text) == text


def test_every_docs_marker_names_a_renderer_and_every_renderer_reads_its_json():
    markers = {m for page in (ROOT / "docs").glob("*.md") for m in re.findall(r"<!-- results: ([a-z_]+) -->", page.read_text())}
    assert markers and markers <= set(render_results.RENDERERS)
    for name in markers:
        assert render_results.RENDERERS[name]().startswith("|") or "|---|" in render_results.RENDERERS[name]()


def _imports(path: Path) -> set[str]:
    """Modules of this package that ``path`` imports (absolute names)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sae_lens_tokenized"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                out.add(candidate if _module_path(candidate) else node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("sae_lens_tokenized")}
    return out


def _module_path(name: str) -> Path | None:
    base = ROOT / name.replace(".", "/")
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def test_imports_go_one_way_and_never_to_the_package_root():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: {i for i in _imports(path) if i in modules} for name, path in modules.items()}
    for name, deps in graph.items():
        if name != "sae_lens_tokenized":
            assert "sae_lens_tokenized" not in deps, f"{name} imports the package root"
    # no cycles among modules (a package's __init__ re-exporting its own modules is not one)
    for name in graph:
        if modules[name].name == "__init__.py":
            graph[name] = {d for d in graph[name] if not d.startswith(name + ".")}
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        for dep in graph[node]:
            if dep in stack or dep == node:
                raise AssertionError("import cycle: " + " -> ".join([*stack, node, dep]))
            if dep not in done:
                visit(dep, [*stack, node])
        done.add(node)

    for name in graph:
        visit(name, [])


def test_no_module_is_over_450_lines():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) <= 450, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


@pytest.mark.parametrize("old, name", [
    ("sae_lens_tokenized.unigrams", "get_unigram_table"),
    ("sae_lens_tokenized.offline", "load_smollm2"),
    ("sae_lens_tokenized.offline", "cache_dir"),
    ("sae_lens_tokenized.saebench", "saebench_mode"),
    ("sae_lens_tokenized.compare", "train_variant"),
    ("sae_lens_tokenized.saes.lookup", "TokenLookupMixin"),
    ("sae_lens_tokenized.training.optim", "TokenizedAdam"),
])
def test_old_module_paths_still_import_with_a_deprecation_warning(old, name):
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert any(issubclass(w.category, DeprecationWarning) and "moved" in str(w.message) for w in caught)
    new = {"get_unigram_table": "lookup_init.unigrams", "load_smollm2": "integrations.offline",
           "cache_dir": "_paths", "saebench_mode": "integrations.saebench", "train_variant": "workbench.runs",
           "TokenLookupMixin": "lookup.mixin", "TokenizedAdam": "lookup.sparse"}[name]
    assert getattr(module, name) is getattr(importlib.import_module(f"sae_lens_tokenized.{new}"), name)
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018
