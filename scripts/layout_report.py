"""The package's shape in figures: lines per module, the longest functions, and import circles (function-level
imports counted), as JSON.

Usage: python scripts/layout_report.py [--package sft_recipes]
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path


def functions(tree: ast.AST, path: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.append((node.end_lineno - node.lineno + 1, f"{path}::{node.name}"))  # type: ignore[operator]
    return found


def circles(package: str) -> list[list[str]]:
    """Strongly connected groups of modules in the import graph (imports inside functions included)."""
    import grimp

    graph = grimp.build_graph(package, include_external_packages=False)
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, []):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10000)
    for module in modules:
        if module not in index:
            visit(module)
    return groups


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default="sft_recipes")
    args = parser.parse_args()
    root = Path(args.package)
    lines: dict[str, int] = {}
    funcs: list[tuple[int, str]] = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        lines[str(path)] = len(text.splitlines())
        funcs += functions(ast.parse(text), str(path))
    funcs.sort(reverse=True)
    report = {
        "modules": len(lines),
        "total_lines": sum(lines.values()),
        "lines_per_module": dict(sorted(lines.items(), key=lambda kv: -kv[1])),
        "modules_over_450": [p for p, n in lines.items() if n > 450],
        "longest_functions": [{"function": name, "lines": n} for n, name in funcs[:5]],
        "functions_over_80": [name for n, name in funcs if n > 80],
        "import_circles": circles(args.package),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
