"""The house: the README is a current front door, the docs' tables come from the committed
results, the package's imports go one way, and old module paths still import."""

import ast
import importlib
import re
import shlex
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


def test_frontiers_are_compared_at_the_tokenized_sae_s_own_l0():
    # a JumpReLU pair at one coefficient sits at very different L0s: the ratio the docs show is
    # against the base's frontier interpolated (log-log) at the tokenized L0, never extrapolated
    base = [(20.0, 0.2), (80.0, 0.05), (320.0, 0.02)]
    assert render_results.nmse_at_l0(base, 80.0) == pytest.approx(0.05)
    assert render_results.nmse_at_l0(base, 40.0) == pytest.approx(0.1)  # halfway in log L0: geometric mean
    assert render_results.nmse_at_l0(list(reversed(base)), 160.0) == pytest.approx((0.05 * 0.02) ** 0.5)
    assert render_results.nmse_at_l0(base, 10.0) is None and render_results.nmse_at_l0(base, 400.0) is None
    summary = [{"architecture": "jumprelu", "layer": 9, "l0_base": x, "nmse_base": y, "l0_tokenized": x / 4,
                "nmse_tokenized": y / 2} for x, y in base]
    assert [render_results.matched_l0_ratio(s, summary) for s in summary] == [
        "outside the base's L0 range", "0.125", "0.200"]


def test_a_result_s_command_copies_and_pastes(monkeypatch):
    from sae_lens_tokenized.workbench import command_line

    argv = ["benchmarks/quality.py", "--tokenized_variants", '{"rowwise": {"lookup_updates": "sparse_rowwise"}}',
            "--out", "results/a folder"]
    monkeypatch.setattr(sys, "argv", argv)
    assert shlex.split(command_line()) == ["python", *argv]


def test_a_sweep_run_a_piece_at_a_time_merges_into_the_sweep_run_at_once(tmp_path):
    import json

    import quality  # benchmarks/quality.py

    whole = json.loads((ROOT / "benchmarks/results/pareto_multi_200k/quality.json").read_text())  # 2 seeds, 5 k

    def piece(name, seeds, levels):
        runs = [{**r, "level": levels.index(r["level"])} for r in whole["runs"]
                if r["seed"] in seeds and r["level"] in levels]
        settings = {**whole["settings"], "seeds": seeds,
                    **{key: [whole["settings"][key][i] for i in levels] for key in ("ks", "l1s", "l0s")}}
        (tmp_path / name).write_text(json.dumps({**whole, "settings": settings, "runs": runs, "runs_together": [
            t for t in whole["runs_together"] if t["seed"] in seeds]}))
        return tmp_path / name

    # a seed per sitting, and a wider grid in another sitting (its levels renumbered there)
    parts = [piece("seed0.json", [0], [0, 1, 2, 3, 4]), piece("seed1_k8_16.json", [1], [0, 1]),
             piece("seed1_k32_to_128.json", [1], [2, 3, 4])]
    noted = json.loads(parts[1].read_text())  # a note on a piece stays with the sweep
    parts[1].write_text(json.dumps({**noted, "note": "a field added after the run"}))
    quality.merge(parts, tmp_path / "merged")
    merged = json.loads((tmp_path / "merged/quality.json").read_text())
    assert merged["note"] == f"{tmp_path.name}/seed1_k8_16.json: a field added after the run"
    assert (merged["settings"]["seeds"], merged["settings"]["ks"]) == ([0, 1], whole["settings"]["ks"])
    assert merged["summary"] == quality.summarise(whole["runs"])
    for m, w in zip(merged["summary"], whole["summary"]):  # the committed means, from one run of both seeds
        assert {k: m[k] for k in w} == w
    # refused: an SAE twice, other settings, or tokenized SAEs of another method (moments, init scale)
    with pytest.raises(SystemExit, match="repeats across the files"):
        quality.merge([parts[0], piece("again.json", [0], [4])], tmp_path / "x")
    other = json.loads(parts[1].read_text())
    parts[1].write_text(json.dumps({**other, "settings": {**other["settings"], "lr": 1e-3}}))
    with pytest.raises(SystemExit, match=r"other settings .*\(lr\)"):
        quality.merge(parts, tmp_path / "x")
    other["settings"]["lr"] = whole["settings"]["lr"]
    for field, value in (("lookup_updates", "sparse_rowwise"), ("lookup_init_scale", 0.5)):  # a moved default
        changed = json.loads(json.dumps(other))
        changed["runs"][0]["tokenized"][field] = value
        parts[1].write_text(json.dumps(changed))
        with pytest.raises(SystemExit, match=f"different {field}"):
            quality.merge(parts, tmp_path / "x")
    assert not (tmp_path / "x").exists()  # nothing written before a refusal


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
