"""mkdocs hooks: result tables rendered from benchmarks/results JSON, and its plots.

A page writes ``<!-- results: NAME -->`` where a table belongs; at build time it is
replaced by ``benchmarks/render_results.py``'s ``RENDERERS[NAME]()`` (an unknown name fails
the build). The PNGs under benchmarks/results/ are published under ``results/`` so pages
can show them (``![...](results/demo/nmse_vs_tokens.png)``).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MARKER = re.compile(r"<!-- results: ([a-z_]+) -->")


def _renderers():
    spec = importlib.util.spec_from_file_location("render_results", ROOT / "benchmarks" / "render_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RENDERERS


def on_files(files, config):
    for png in sorted(RESULTS.rglob("*.png")):
        files.append(File(str(Path("results") / png.relative_to(RESULTS)), src_dir=str(ROOT / "benchmarks"),
                          dest_dir=config["site_dir"], use_directory_urls=config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    renderers = _renderers()

    def render(match):
        name = match.group(1)
        if name not in renderers:
            raise KeyError(f"{page.file.src_path}: no renderer {name!r} in benchmarks/render_results.py")
        return renderers[name]()

    return MARKER.sub(render, markdown)
