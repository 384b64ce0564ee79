"""The layer map of ARCHITECTURE.md, checked against the code: every import of a project module, at the top of
a file or inside a function, points down the list of layers (or sideways, within its layer), and no group of
modules imports itself in a circle. The files are parsed, not imported: nothing here loads TensorFlow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Bottom to top: a module may import modules of its own layer and of the layers before it, never after.
#: Keep in step with ARCHITECTURE.md (a test checks that it names every module listed here).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core 1 facts", ("core.errors", "core.results", "core.boxes", "core.hardware", "core.image", "core.modelfiles",
                      "core.reliability", "core.memory")),
    ("core 2 networks", ("core.vggface",)),
    ("core 3 runtimes", ("core.lite", "core.runtime", "core.pnet_canvas", "core.mtcnn_lite")),
    ("core 4 steps", ("core.crop", "core.detect", "core.models", "core.modelcard")),
    ("core 5 pipeline", ("core.pipeline", "core")),
    ("core 6 entry points", ("core.__main__", "core.batch", "core.engine_ray", "core.api", "core.api_limits",
                              "core.api_support", "core.draw")),
    ("train 1 data", ("train.options", "train.landmark_store", "train.augment", "train.data", "train.landmarks")),
    ("train 2 recipe", ("train.model", "train.metrics")),
    ("train 3 reports", ("train.degrade", "train.evaluate", "train.compare", "train.card", "train.measure_frame")),
    ("train 4 after training", ("train.calibrate", "train.int8", "train.export", "train.quantize",
                                "train.reliability", "train.bias_lines", "train.publish")),
    ("train 5 fitting", ("train.callbacks", "train.campaign_state", "train.trainer", "train.campaign",
                         "train.campaign_restart", "train.soup", "train.speed")),
    ("train 6 entry point", ("train", "train.__main__")),
    ("ui", ("ui", "ui.charts", "ui.cache", "ui.monitor", "ui.campaign", "ui.view")),
    ("app and benchmarks", ("streamlit_app", "pages.1_Photo_upload", "pages.2_Webcam_snapshot",
                            "pages.3_Training_history", "bench", "bench.__main__", "bench.ab", "bench.augment",
                            "bench.batch", "bench.border_faces", "bench.detection", "bench.flip", "bench.inputs",
                            "bench.load", "bench.memory", "bench.app_memory", "bench.peer_accuracy",
                            "bench.peer_worker", "bench.probe", "bench.streams")),
]

#: Packages a package never imports, whatever the layers say: the app never loads the training code (and with
#: it TensorFlow), and nothing imports the app or the benchmarks.
FORBIDDEN = {"core": {"train", "ui", "pages", "streamlit_app", "bench"},
             "train": {"ui", "pages", "streamlit_app", "bench"},
             "ui": {"train", "pages", "streamlit_app", "bench"},
             "pages": {"train", "bench"}, "streamlit_app": {"train", "bench"}}

PACKAGES = ("core", "train", "ui", "pages", "bench")


def module_files() -> dict[str, Path]:
    """Every project module (dotted name) and its file."""
    files = {"streamlit_app": ROOT / "streamlit_app.py"}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imports_of(name: str, path: Path, modules: set[str]) -> dict[str, int]:
    """The project modules that ``path`` (module ``name``) imports anywhere in it -> the first line of each.

    ``from a import b`` counts as module ``a.b`` where that is a module, else as ``a``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            while target and target not in modules:  # import a.b.c of a module a.b: the module a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                found[target] = min(found.get(target, node.lineno), node.lineno)
    return found


def graph() -> dict[str, dict[str, int]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def layer_of() -> dict[str, int]:
    return {module: i for i, (_, modules) in enumerate(LAYERS) for module in modules}


def top_package(module: str) -> str:
    return module.split(".")[0]


def test_every_module_has_a_layer():
    declared = layer_of()
    missing = sorted(set(module_files()) - set(declared))
    assert not missing, f"modules without a layer: {missing}; add each to LAYERS here and to ARCHITECTURE.md"
    assert len(declared) == sum(len(modules) for _, modules in LAYERS), "a module is listed in two layers"


def test_architecture_md_names_every_module():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    files = module_files()
    unnamed = [str(files[m].relative_to(ROOT)) for _, modules in LAYERS for m in modules
               if m in files and str(files[m].relative_to(ROOT)) not in text]
    assert not unnamed, f"ARCHITECTURE.md does not mention {unnamed}"


def upward_imports(imports: dict[str, dict[str, int]]) -> list[str]:
    """Every import that points up the layer list or into a forbidden package, as readable lines."""
    layer = layer_of()
    files = module_files()
    bad = []
    for module, targets in sorted(imports.items()):
        for target, line in sorted(targets.items()):
            where = f"{files[module].relative_to(ROOT)}:{line}: {module} imports {target}"
            if top_package(target) in FORBIDDEN.get(top_package(module), ()):
                bad.append(f"{where} ({top_package(module)} never imports {top_package(target)})")
            elif module in layer and target in layer and layer[target] > layer[module]:
                bad.append(f"{where} (layer '{LAYERS[layer[module]][0]}' below '{LAYERS[layer[target]][0]}')")
    return bad


def cycles(imports: dict[str, dict[str, int]]) -> list[list[str]]:
    """The import circles: each strongly connected group of two or more modules (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in imports.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(imports):
        if node not in index:
            visit(node)
    return sorted(groups)


def test_no_import_points_up_a_layer():
    bad = upward_imports(graph())
    assert not bad, "imports against the layer map (move the shared piece down, see ARCHITECTURE.md):\n" + \
        "\n".join(bad)


def test_no_import_circles():
    circles = cycles(graph())
    assert not circles, f"modules that import each other in a circle: {circles}"


@pytest.mark.parametrize(("edges", "expected"), [
    ({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}, [["a", "b", "c"]]),
    ({"a": {"b": 1}, "b": {}, "c": {"c": 1}}, []),
])
def test_the_circle_finder_finds_circles(edges, expected):
    assert cycles(edges) == expected


def test_the_checks_catch_a_planted_upward_import():
    """The checks themselves: an import of the pipeline planted in core.hardware is reported as pointing up a
    layer and as closing a circle (the pipeline reaches hardware through the models); core importing train
    is refused whatever the layers."""
    imports = graph()
    planted = {**imports, "core.hardware": {**imports["core.hardware"], "core.pipeline": 1}}
    assert any("core.hardware imports core.pipeline" in line for line in upward_imports(planted))
    assert any("core.hardware" in group and "core.pipeline" in group for group in cycles(planted))
    trained = {**imports, "core.models": {**imports["core.models"], "train.model": 1}}
    assert any("core never imports train" in line for line in upward_imports(trained))
