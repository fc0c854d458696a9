"""Synthetic input trees: a toolchain of small files, C sources that include some
of its headers, and a Python package tree.  Pure file creation; no timing.

The toolchain puts ~20 files in each leaf directory at depth 3 to 6, in the order
``inputs`` lists them, so the first N inputs are whole leaf directories: the
copy-based strategies can then copy exactly the declared inputs.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs

FILES_PER_DIR = 20


@attrs.frozen
class Toolchain:
    root: Path
    inputs: list[str]  # absolute host paths, in leaf-directory order

    def leaf_dirs(self, n: int) -> list[str]:
        """Leaf directories (relative to root) holding the first ``n`` inputs."""
        seen: dict[str, None] = {}
        for path in self.inputs[:n]:
            seen[os.path.relpath(os.path.dirname(path), self.root)] = None
        return list(seen)

    def relative(self, n: int) -> list[str]:
        return [os.path.relpath(p, self.root) for p in self.inputs[:n]]


def _leaf_dir(index: int) -> str:
    """The index-th leaf directory: depth 3..6, fan-out 8 above the leaves."""
    depth = 3 + index % 4
    parts, rest = [], index
    for level in range(depth - 1):
        parts.append(f"d{level}_{rest % 8}")
        rest //= 8
    parts.append(f"leaf{index}")
    return os.path.join(*parts)


def header_text(index: int) -> bytes:
    return (f"#pragma once\n#define TOOL_{index} {index}\n"
            f"static inline int tool_{index}(int x) {{ return x * {index % 97 + 1}; }}\n").encode()


def make_toolchain(root: Path, count: int) -> Toolchain:
    """``count`` small headers, FILES_PER_DIR per leaf directory."""
    inputs = []
    for index in range(count):
        if index % FILES_PER_DIR == 0:
            directory = root / _leaf_dir(index // FILES_PER_DIR)
            directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"h{index}.h"
        path.write_bytes(header_text(index))
        inputs.append(str(path))
    return Toolchain(root, inputs)


def c_source(toolchain: Toolchain, action: int, headers: int) -> bytes:
    """A C file including ``headers`` toolchain headers (by path relative to root)."""
    step = max(1, len(toolchain.inputs) // headers)
    chosen = [(action * 7 + i * step) % len(toolchain.inputs) for i in range(headers)]
    lines = [f'#include "{os.path.relpath(toolchain.inputs[i], toolchain.root)}"' for i in chosen]
    total = " + ".join(f"tool_{i}({action})" for i in chosen[:50]) or "0"
    lines.append(f"int action_{action}(void) {{ return {total}; }}")
    return ("\n".join(lines) + "\n").encode()


def make_python_tree(root: Path, packages: int, modules: int) -> list[str]:
    """``packages`` packages of ``modules`` modules each; returns the module names."""
    names = []
    for p in range(packages):
        pkg = root / f"pkg{p}"
        pkg.mkdir(parents=True, exist_ok=True)
        (pkg / "__init__.py").write_text("")
        for m in range(modules):
            (pkg / f"mod{m}.py").write_text(f"VALUE = {p * 1000 + m}\n"
                                           f"def f(x):\n    return x + VALUE\n")
            names.append(f"pkg{p}.mod{m}")
    return names


def python_files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*.py"))
