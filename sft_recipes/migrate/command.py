"""Rewrite a recipe written for older TRL, transformers, alignment-handbook or open-r1 into today's keys.

Usage: sft-recipes migrate OLD.yaml [-o NEW.yaml] [--force]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sft_recipes.arguments import command_parser
from sft_recipes.errors import Problem, RecipeError

EPILOG = """Comments, key order and untouched lines are kept. Each change is printed with its reason (on stderr);
`!` marks an approximation to review. Without -o the new recipe goes to stdout, and an inline chat template is
written beside OLD.yaml. OLD.yaml is never modified; an existing file is overwritten only with --force.
Exit status: 0, or 1 when keys are left that neither TRL nor the rename table knows."""


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("migrate", __doc__)
    parser.epilog = EPILOG
    parser.add_argument("old", metavar="OLD.yaml", help="the recipe to migrate (never modified)")
    parser.add_argument("-o", "--output", metavar="NEW.yaml", help="write the new recipe here (default: stdout)")
    parser.add_argument("--force", action="store_true", help="overwrite NEW.yaml and the .jinja if they exist")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    old = Path(args.old)
    if not old.is_file():
        raise RecipeError(Problem(args.old, "recipe file not found", "check the path"))
    new = Path(args.output) if args.output else None
    if new is not None and new.resolve() == old.resolve():
        raise RecipeError(Problem(args.output, "NEW.yaml is OLD.yaml", "migrate never modifies OLD.yaml: use -o NEW"))
    from sft_recipes.migrate.rules import migrate_text

    result = migrate_text(old.read_text(), template_target(old, new), known_keys())
    for path in [*([new] if new else []), *result.files]:
        if path.exists() and not args.force and not (path in result.files and path.read_text() == result.files[path]):
            raise RecipeError(Problem(str(path), "exists", "pass --force to overwrite it, or choose another -o"))
    for path, content in result.files.items():
        path.write_text(content)
    if new is not None:
        new.write_text(result.text)
    else:
        sys.stdout.write(result.text)
    report(result, old, new)
    return 1 if result.unknown else 0


def template_target(old: Path, new: Path | None) -> tuple[Path, str]:
    """Where an inline chat template is written (beside the new recipe), and the path the recipe gives for it:
    chat_template_path is read from the directory you run in, so relative to it when the file lies below."""
    path = (new or old).with_suffix(".jinja")
    absolute, cwd = path.resolve(), Path.cwd().resolve()
    return path, str(absolute.relative_to(cwd) if absolute.is_relative_to(cwd) else absolute)


def report(result: Any, old: Path, new: Path | None) -> None:
    lines = [f"sft-recipes migrate: {old} -> {new or 'stdout'}: {len(result.changes)} change(s)"]
    lines += [f"  {change}" for change in sorted(result.changes, key=lambda c: c.line)]
    lines += [f"  wrote {path}" for path in result.files]
    reviews = sum(c.review for c in result.changes)
    lines += [f"  {reviews} change(s) marked ! are approximations: check them"] if reviews else []
    lines += [f"  left as is: `{key}` is neither a recipe key nor in the rename table" for key in result.unknown]
    print("\n".join(lines), file=sys.stderr)


def known_keys() -> dict[str, Any]:
    from sft_recipes.config import field_types

    return field_types()
