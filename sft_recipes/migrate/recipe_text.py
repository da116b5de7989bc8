"""A recipe's YAML text, edited in place: every line no edit touches (comments, order, spacing) stays as it was."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Node = Any  # a yaml.Node; PyYAML ships no type hints


def end_of(node: Node) -> tuple[int, int]:
    """(line, column) just past the node's last character: a block collection's own end mark is the next token's."""
    if isinstance(node, yaml.MappingNode) and node.value and not node.flow_style:
        return end_of(node.value[-1][1])
    if isinstance(node, yaml.SequenceNode) and node.value and not node.flow_style:
        return end_of(node.value[-1])
    return node.end_mark.line, node.end_mark.column


def flow(value: Any) -> str:
    """A value as one line of YAML (quoted where YAML would misread it)."""
    return yaml.safe_dump([value], default_flow_style=True, width=1 << 30, allow_unicode=True).strip()[1:-1]


@dataclass
class RecipeText:
    """The lines of a recipe, its top-level pairs, and the edits made so far: `render` applies them to the text at
    the nodes' marks, since dumping the document again would drop its comments."""

    text: str
    lines: list[str] = field(init=False)
    pairs: dict[str, tuple[Node, Node]] = field(init=False)
    edits: dict[tuple[int, int, int], str] = field(default_factory=dict)  # (line, from col, to col) -> new text
    deleted: set[int] = field(default_factory=set)
    replaced: dict[int, tuple[int, list[str]]] = field(default_factory=dict)  # first line -> (last line, new lines)
    dedent: dict[int, int] = field(default_factory=dict)  # line -> spaces to take off its start

    def __post_init__(self) -> None:
        self.lines = self.text.splitlines()
        root = yaml.compose(self.text) if self.text.strip() else None
        if root is not None and not isinstance(root, yaml.MappingNode):
            raise ValueError("a recipe must be a YAML mapping of key: value")
        self.pairs = {k.value: (k, v) for k, v in (root.value if root is not None else [])}

    def span(self, key: str) -> tuple[int, int]:
        """The first and last line (0-based, inclusive) of a top-level pair."""
        k, v = self.pairs[key]
        return k.start_mark.line, self.last_line(v)

    def last_line(self, node: Node) -> int:
        line, column = end_of(node)
        return line - 1 if column == 0 and line > node.start_mark.line else line

    def comment(self, node: Node) -> str:
        """The `# comment` after a one-line node, or ''."""
        line, column = end_of(node)
        rest = self.lines[line][column:].strip() if line < len(self.lines) else ""
        return rest if rest.startswith("#") else ""

    def replace_node(self, node: Node, text: str) -> None:
        """Replace a one-line node's text (a key or a scalar value)."""
        start, end = node.start_mark, node.end_mark
        if start.line != end.line:
            raise ValueError(f"line {start.line + 1}: only one-line values can be rewritten in place")
        self.edits[(start.line, start.column, end.column)] = text

    def append_to_line(self, line: int, text: str) -> None:
        """Add text at the end of a line, in place of its trailing spaces."""
        width = len(self.lines[line].rstrip())
        self.edits[(line, width, len(self.lines[line]))] = text

    def delete_lines(self, first: int, last: int) -> None:
        self.deleted.update(range(first, last + 1))

    def delete(self, key: str) -> None:
        self.delete_lines(*self.span(key))

    def replace(self, key: str, new_lines: list[str]) -> None:
        """Replace a top-level pair by new lines, keeping a trailing comment of a one-line pair."""
        first, last = self.span(key)
        note = self.comment(self.pairs[key][1]) if first == last else ""
        if note and new_lines:
            new_lines = [f"{new_lines[0]}  {note}", *new_lines[1:]]
        self.replaced[first] = (last, new_lines)

    def render(self) -> str:
        out: list[str] = []
        skip_to = -1
        for number, line in enumerate(self.lines):
            if number <= skip_to:
                continue
            if number in self.replaced:
                skip_to, new_lines = self.replaced[number]
                out += [_dedent(text, self.dedent.get(number, 0)) for text in new_lines]
                continue
            if number in self.deleted:
                continue
            edits = [(start, end, text) for (at, start, end), text in self.edits.items() if at == number]
            for start, end, text in sorted(edits, key=lambda edit: -edit[0]):
                line = line[:start] + text + line[end:]
            out.append(_dedent(line, self.dedent.get(number, 0)))
        return "\n".join(out) + "\n"


def _dedent(line: str, spaces: int) -> str:
    return line[min(spaces, len(line) - len(line.lstrip(" "))) :]


@dataclass
class Change:
    """One change migrate made, where (the old recipe's line) and why; `review`: an approximation to check."""

    line: int
    what: str
    reason: str
    review: bool = False

    def __str__(self) -> str:
        return f"{'!' if self.review else ' '} line {self.line}: {self.what}: {self.reason}"


@dataclass
class Rewrite:
    """A recipe being migrated: its text, its parsed values, and the changes, files and env variables so far."""

    doc: RecipeText
    data: dict[str, Any]
    template: tuple[Path, str]  # where an inline chat template goes, and how the recipe refers to it
    changes: list[Change] = field(default_factory=list)
    files: dict[Path, str] = field(default_factory=dict)
    env: list[tuple[str, str, Any]] = field(default_factory=list)  # (old key, variable, value)

    def note(self, key: str, what: str, reason: str, review: bool = False, line: int | None = None) -> None:
        line = self.doc.pairs[key][0].start_mark.line + 1 if line is None else line
        self.changes.append(Change(line, what, reason, review))
