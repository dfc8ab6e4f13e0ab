#!/usr/bin/env python3
"""Finds import cycles between the top-level modules of a Rust crate.

Usage: python3 scripts/module_cycles.py CRATE/src [CRATE/src ...]

For each `src/` directory, every `.rs` file is a module (`a.rs` or `a/mod.rs` is `a`,
`a/b.rs` is `a::b`), and every `crate::`, `super::` or `self::` path in its code that names
another module of the crate is an edge. Each edge is collapsed to the top-level module on
either side: edges within one top-level module's subtree are ignored, and `lib.rs` and
`main.rs` (the root, which declares every module) are left out. A cycle is a strongly
connected component of more than one top-level module; each is printed, and the script exits
1 if any crate has one.

Test code is left out: files named `tests.rs`, and inline test modules (a `#[cfg(test)]`
line followed by `mod tests {`, or a `mod` of another name, up to its closing brace). So are comments (doc links
name modules without depending on them) and string literals.
"""

import re
import sys
from pathlib import Path

ROOT_FILES = {"lib.rs", "main.rs"}
PATH_START = re.compile(r"\b(crate|super|self)\s*::")
SEGMENT = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(::)?")
GROUP = re.compile(r"\s*\{")


def module_of(src: Path, file: Path) -> tuple[str, ...]:
    """The module path of `file` within the crate rooted at `src`."""
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] == "mod" or (len(parts) == 1 and file.name in ROOT_FILES):
        parts = parts[:-1]
    return tuple(parts)


def strip_comments_and_strings(text: str) -> str:
    """The code of `text` with comments and string and char literals blanked out."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end == -1 else end
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif (raw := re.match(r'b?r(#*)"', text[i:])) and (i == 0 or not text[i - 1].isalnum()):
            closing = '"' + raw.group(1)
            end = text.find(closing, i + raw.end())
            i = n if end == -1 else end + len(closing)
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'" and (char := re.match(r"'(\\.[^']*|[^\\'])'", text[i:])):
            # A char literal, not a lifetime: `'a'`, `'\n'`, `'\u{0}'`.
            i += char.end()
            out.append("' '")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def without_inline_tests(code: str) -> str:
    """`code` without its inline test modules: a `#[cfg(test)]` attribute followed by
    `mod tests { ... }` (or a test module of another name, such as a contract suite's), up to
    the brace that closes it. A `mod tests;` declaration is dropped too: its file is
    `tests.rs`."""
    pattern = re.compile(
        r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+[A-Za-z_][A-Za-z0-9_]*\s*([{;])"
    )
    while (match := pattern.search(code)) is not None:
        end = match.end()
        if match.group(1) == "{":
            depth = 1
            while end < len(code) and depth:
                depth += {"{": 1, "}": -1}.get(code[end], 0)
                end += 1
        code = code[: match.start()] + code[end:]
    return code


def referenced_paths(code: str):
    """Each `crate::`/`super::`/`self::` path in `code` as (anchor, segments), with `use`
    groups (`crate::{a, b::c}`) expanded one level at a time."""
    for match in PATH_START.finditer(code):
        yield from _expand(match.group(1), code, match.end(), [])


def _expand(anchor: str, code: str, pos: int, prefix: list[str]):
    segments = list(prefix)
    while True:
        group = GROUP.match(code, pos)
        if group:
            depth, j = 1, group.end()
            start = j
            items, item_start = [], start
            while j < len(code) and depth:
                if code[j] == "{":
                    depth += 1
                elif code[j] == "}":
                    depth -= 1
                    if depth == 0:
                        items.append((item_start, j))
                elif code[j] == "," and depth == 1:
                    items.append((item_start, j))
                    item_start = j + 1
                j += 1
            found = False
            for item_start, item_end in items:
                inner = code[:item_end]
                for path in _expand(anchor, inner, item_start, segments):
                    found = True
                    yield path
            if not found:
                yield anchor, segments
            return
        seg = SEGMENT.match(code, pos)
        if not seg:
            yield anchor, segments
            return
        segments.append(seg.group(1))
        pos = seg.end()
        if not seg.group(2):
            yield anchor, segments
            return


def resolve(modules: set, current: tuple, anchor: str, segments: list[str]):
    """The crate module that a path from `current` names (its longest prefix that is a
    module), or None."""
    if anchor == "crate":
        base = ()
    elif anchor == "self":
        base = current
    else:
        base = current[:-1]
        while segments and segments[0] == "super":
            base, segments = base[:-1], segments[1:]
    target = base
    for segment in segments:
        if segment == "super":
            target = target[:-1]
        elif target + (segment,) in modules:
            target = target + (segment,)
        else:
            break
    return target


def crate_graph(src: Path) -> dict[str, set[str]]:
    """Edges between the top-level modules of the crate at `src`."""
    files = [f for f in src.rglob("*.rs") if f.name != "tests.rs"]
    modules = {module_of(src, f) for f in files}
    graph: dict[str, set[str]] = {m[0]: set() for m in modules if m}
    for file in files:
        current = module_of(src, file)
        if not current:
            continue
        code = without_inline_tests(strip_comments_and_strings(file.read_text(encoding="utf-8")))
        for anchor, segments in referenced_paths(code):
            target = resolve(modules, current, anchor, segments)
            if target and target[0] != current[0]:
                graph[current[0]].add(target[0])
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of `graph` with more than one node (Tarjan)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def main(args: list[str]) -> int:
    if not args:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    any_cycle = False
    for arg in args:
        src = Path(arg)
        if not src.is_dir():
            print(f"{arg}: not a directory", file=sys.stderr)
            return 2
        graph = crate_graph(src)
        found = cycles(graph)
        edges = sum(len(targets) for targets in graph.values())
        print(f"{arg}: {len(graph)} modules, {edges} edges, {len(found)} cycle(s)")
        for component in found:
            members = set(component)
            print(f"  cycle: {', '.join(component)}")
            for node in component:
                inside = sorted(graph[node] & members)
                print(f"    {node} -> {', '.join(inside)}")
        any_cycle = any_cycle or bool(found)
    return 1 if any_cycle else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
