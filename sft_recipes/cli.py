"""The `sft-recipes` command: dispatches to a command module, lazily, so --help stays instant.

Usage: sft-recipes [--debug] <command> [args]"""

from __future__ import annotations

import importlib
import sys

# command -> the module that owns it: its docstring's first line is the summary, build_parser() its help, main() it.
COMMANDS = {
    "train": "sft_recipes.train",
    "validate": "sft_recipes.validate.command",
    "inspect": "sft_recipes.inspection.command",
    "plan": "sft_recipes.plan.command",
    "merge": "sft_recipes.merge",
    "report": "sft_recipes.report",
    "preprocess": "sft_recipes.preprocess",
    "chat": "sft_recipes.chat",
    "eval": "sft_recipes.evaluation.command",
    "env": "sft_recipes.environment",
    "migrate": "sft_recipes.migrate.command",
}


def usage() -> str:
    from sft_recipes.arguments import summary

    lines = ["usage: sft-recipes [--debug] <command> [args]", "", "commands:"]
    for name, module in COMMANDS.items():
        lines.append(f"  {name:<10} {summary(importlib.import_module(module).__doc__)}")
    lines += ["", "`sft-recipes <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"sft-recipes: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name])
    if "-h" in rest or "--help" in rest:
        print(module.build_parser().format_help())
        return 0
    from sft_recipes.arguments import configure_logging
    from sft_recipes.errors import RecipeError

    configure_logging(debug)
    try:
        return module.main(rest)
    except RecipeError as err:
        if debug:
            raise
        print(f"sft-recipes {name}: {len(err.problems)} problem(s)", file=sys.stderr)
        for problem in err.problems:
            print(f"  - {problem}".replace("\n", "\n    "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
