"""The `sft-recipes` command: dispatches to a command module, lazily, so --help stays instant.

Usage: sft-recipes [--debug] <command> [args]
"""

from __future__ import annotations

import importlib
import logging
import sys
import warnings

# name -> (module, one line of help, takes a recipe)
COMMANDS = {
    "train": ("sft_recipes.train", "fine-tune a model from a recipe (locally or through accelerate launch)", True),
    "validate": ("sft_recipes.validate", "check a recipe, its model, data and hardware without loading weights", True),
    "inspect": (
        "sft_recipes.inspection",
        "show the first examples exactly as the model sees them, trained tokens highlighted",
        True,
    ),
    "plan": ("sft_recipes.plan", "predict peak GPU memory per device and whether the recipe fits", True),
    "merge": ("sft_recipes.merge", "merge a LoRA adapter into its base and verify the logits agree", False),
    "report": ("sft_recipes.report", "plot loss, learning rate, tokens/s and memory of a finished run", False),
    "env": ("sft_recipes.environment", "print versions, accelerators and optional extras", False),
}

RECIPE_HELP = """usage: sft-recipes {name} --config RECIPE.yaml [--key value ...]{synopsis}

{summary}.

The recipe is flat TRL YAML: keys of ModelConfig, ScriptArguments, trl.SFTConfig and the dataset mixture,
plus an optional `env:` block. Command-line flags override the YAML; an unknown key is an error.

options:
  --config PATH          the recipe (see recipes/README.md)
  --KEY VALUE            override any recipe key, e.g. --learning_rate 1.0e-4 --output_dir out/
  --help-all             list every recipe key with its help (slow: imports TRL)
  --debug                show tracebacks{options}
"""
# command -> (extra synopsis, extra option lines)
RECIPE_EXTRAS = {
    "train": (
        "\n         [--accelerate_config NAME|PATH] [--num_processes N] [--num_machines M] [--machine_rank K]"
        "\n         [--main_process_ip HOST] [--main_process_port PORT]",
        "\n  --accelerate_config    accelerate_configs/<NAME>.yaml (single_gpu, multi_gpu, zero2, zero3, fsdp2, ...)"
        "\n                         or a path; the run then goes through `accelerate launch`"
        "\n  --num_processes ...    passed to accelerate launch (override the config's values)",
    ),
    "validate": ("", "\n  --accelerate_config    also check the recipe against this accelerate config"),
    "plan": (
        " [--accelerate_config NAME|PATH] [--num_processes N] [--gpu-memory GiB] [--json]",
        "\n  --gpu-memory GiB       memory per GPU for the verdict (default: the local GPU's)"
        "\n  --json                 print the plan as JSON",
    ),
    "inspect": (
        " [-n N] [--format text|html|json] [--out PATH]",
        "\n  -n N                   number of examples to show (default 3)"
        "\n  --format FORMAT        text (terminal), html or json"
        "\n  --out PATH             write html/json there instead of stdout",
    ),
}


def recipe_help(name: str) -> str:
    summary = COMMANDS[name][1]
    synopsis, options = RECIPE_EXTRAS.get(name, ("", ""))
    return RECIPE_HELP.format(name=name, summary=summary[0].upper() + summary[1:], synopsis=synopsis, options=options)


def usage() -> str:
    lines = ["usage: sft-recipes [--debug] <command> [args]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_, _) in COMMANDS.items()]
    lines += ["", "`sft-recipes <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"sft-recipes: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, summary, takes_recipe = COMMANDS[name]
    if takes_recipe and ("-h" in rest or "--help" in rest):
        print(recipe_help(name))
        return 0
    if takes_recipe and "--help-all" in rest:
        from sft_recipes.config import print_help_all

        print_help_all()
        return 0
    configure_logging(debug)
    from sft_recipes.errors import RecipeError

    try:
        return importlib.import_module(module_name).main(rest)
    except RecipeError as err:
        if debug:
            raise
        problems = err.problems
        print(f"sft-recipes {name}: {len(problems)} problem(s)", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}".replace("\n", "\n    "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def configure_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="[%(name)s] %(message)s")
    # TRL's own default (gradient_checkpointing=True) trips transformers' rename warning on every run.
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing. is deprecated.*")
    warnings.filterwarnings("ignore", message=".*Failed to load CPU gemm_4bit_forward.*")
    # bitsandbytes logs that it found no Hub kernel for CPU 4-bit matmuls; its own kernels then run, so say nothing.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
