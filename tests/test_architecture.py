"""The house: packages import one way, modules stay small, planning needs no runtime, and the
extension points documented in docs/architecture.md work exactly as written there."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
from conftest import ROOT, run_segstream

PACKAGE = ROOT / "segstream"
TOP_PACKAGES = ("pipeline", "engines", "evaluation", "datasets", "cli")
MAX_LINES = 400


def _package_imports() -> set[tuple[str, str]]:
    """(importing top package, imported top package) over every module of segstream."""
    edges = set()
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        if len(parts) < 2:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                bits = name.split(".")
                if bits[0] == "segstream" and len(bits) > 1 and bits[1] in TOP_PACKAGES and bits[1] != parts[0]:
                    edges.add((parts[0], bits[1]))
    return edges


def test_no_import_cycles_between_the_packages():
    edges = _package_imports()
    assert ("pipeline", "engines") in edges  # the scan sees imports at all
    cycles = sorted(f"{a} <-> {b}" for a, b in edges if (b, a) in edges and a < b)
    assert cycles == []
    # the intended direction: datasets and evaluation use neither pipeline nor engines
    for low in ("datasets", "evaluation"):
        assert not {(low, "pipeline"), (low, "engines"), (low, "cli")} & edges, sorted(edges)
    assert ("engines", "pipeline") not in edges


def test_no_module_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_planning_imports_neither_zeromq_nor_shared_memory():
    code = ("import sys\n"
            "import segstream.pipeline.graph, segstream.pipeline.spec, segstream.pipeline.config\n"
            "print(sorted(m for m in ('zmq', 'segstream.pipeline.wire.shm_ring', 'multiprocessing.shared_memory',"
            " 'segstream.pipeline.runtime') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _doc_blocks() -> tuple[str, dict[str, dict[str, str]]]:
    """The plugin module and its entry points, as docs/architecture.md shows them."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    module = next(block for block in re.findall(r"```python\n(.*?)```", doc, re.S) if "# my_plugin.py" in block)
    toml = next(block for block in re.findall(r"```toml\n(.*?)```", doc, re.S) if "entry-points" in block)
    groups: dict[str, dict[str, str]] = {}
    group = ""
    for line in toml.splitlines():
        header = re.match(r'\[project\.entry-points\."([^"]+)"\]', line)
        if header:
            group = header.group(1)
            groups[group] = {}
        elif "=" in line and group:
            name, value = (part.strip().strip('"') for part in line.split("=", 1))
            groups[group][name] = value
    return module, groups


def _install_plugin(folder: Path) -> dict[str, str]:
    """What ``pip install`` of the documented plugin leaves: the module and a dist-info with
    its entry points, on the path of every process of the run."""
    module, groups = _doc_blocks()
    (folder / "my_plugin.py").write_text(module)
    dist = folder / "my_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in entries.items()) + "\n"
        for group, entries in groups.items()))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}


def test_the_documented_toy_source_and_sink_run_in_a_pipeline(tmp_path, fast_onnx):
    site = tmp_path / "site"
    site.mkdir()
    env = _install_plugin(site)
    record, classes = tmp_path / "out", tmp_path / "classes.jsonl"
    out = run_segstream("run", "--source", "chessboard:6", "--sink", f"classlist:{classes}", "--model",
                        str(fast_onnx), "--publish", "", "--record", str(record), "--quiet", env=env, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in classes.read_text().splitlines()]
    assert [line["frame"] for line in lines] == [f"board-{i:03d}" for i in range(6)]
    assert all(line["classes"] for line in lines)
    stats = json.loads((record / "stats.json").read_text())
    assert stats["frames_in"] == 6 and stats["frames_published"] == 6
    assert stats["stages"]["publish"]["sinks"]["classlist"] == {"lines": 6}
    assert stats["policy"] == "lossless"  # the source says it is not live
    masks = sorted((record / "masks").glob("*.png"))
    assert [p.stem for p in masks] == [f"board-{i:03d}" for i in range(6)]
    assert cv2.imread(str(masks[0]), cv2.IMREAD_UNCHANGED).shape == (96, 192)  # label ids at frame size


def test_an_unknown_scheme_lists_the_known_ones(tmp_path):
    out = run_segstream("run", "--source", "nosuch:1", "--sink", "nowhere:x", "--quiet")
    assert out.returncode == 2
    assert "unknown sink 'nowhere:x'" in out.stderr and "masks:DIR" in out.stderr
