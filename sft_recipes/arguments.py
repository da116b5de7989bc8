"""Command-line conventions every command shares: its own argparse parser, the recipe options, what goes to stdout."""

from __future__ import annotations

import argparse
import logging
import sys
import typing
import warnings

from sft_recipes.errors import Problem, RecipeError

RECIPE_EPILOG = """The recipe is flat TRL YAML: keys of ModelConfig, ScriptArguments, trl.SFTConfig and the dataset
mixture, plus an optional `env:` block. Flags after the command's own override the YAML (--learning_rate 1.0e-4);
an unknown key is an error. `--help-all` lists every recipe key with its help."""


class CommandParser(argparse.ArgumentParser):
    """argparse whose usage errors become RecipeError (a clean message and exit 2, a traceback only with --debug)."""

    def error(self, message: str) -> typing.NoReturn:
        raise RecipeError(Problem(self.prog, message, f"see `{self.prog} --help`"))


class _HelpAll(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, *args: typing.Any, **kwargs: typing.Any) -> None:
        from sft_recipes.config import print_help_all

        print_help_all()
        parser.exit()


def command_parser(name: str, doc: str | None, recipe: bool = False) -> CommandParser:
    """The parser a command module's `build_parser()` returns (cheap: no torch, transformers or TRL at import); `doc`
    is its module docstring, whose first line is the command's summary. With recipe=True it takes --config and
    --help-all; other flags are left for the recipe parser."""
    parser = CommandParser(
        prog=f"sft-recipes {name}",
        description=summary(doc),
        epilog=RECIPE_EPILOG if recipe else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    if recipe:
        parser.add_argument("--config", metavar="RECIPE.yaml", help="the recipe (see recipes/README.md)")
        parser.add_argument("--help-all", nargs=0, action=_HelpAll, help="every recipe key with its help (slow)")
    return parser


def parse_with_recipe(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The command's own flags, and the arguments for the recipe parser (--config first, then the overrides)."""
    args, rest = parser.parse_known_args(argv)
    config = getattr(args, "config", None)
    return args, (["--config", config] if config else []) + rest


def summary(doc: str | None) -> str:
    """A module docstring's first paragraph, on one line."""
    return " ".join((doc or "").strip().split("\n\n")[0].split()).rstrip(".")


# The flags that pick a topology; train hands them to `accelerate launch`, validate and plan check against it.
LAUNCH_FLAGS = {
    "accelerate_config": "a bundled accelerate config (single_gpu, multi_gpu, zero2, zero3, zero3_offload, fsdp2, "
    "fsdp2_qlora, multi_node) or a path to one",
    "num_processes": "processes in all (overrides the config)",
    "num_machines": "machines (overrides the config)",
    "machine_rank": "this machine's rank",
    "main_process_ip": "the rank-0 machine's address",
    "main_process_port": "the rank-0 machine's port",
}


def launch_flags(args: argparse.Namespace) -> dict[str, str]:
    """The topology flags that were given, as `accelerate launch` takes them."""
    return {key: str(getattr(args, key)) for key in LAUNCH_FLAGS if getattr(args, key, None) is not None}


def add_launch_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("topology (accelerate launch)")
    for name, text in LAUNCH_FLAGS.items():
        number = name not in ("accelerate_config", "main_process_ip")
        metavar = "NAME|PATH" if name == "accelerate_config" else None
        group.add_argument(f"--{name}", type=int if number else str, metavar=metavar, help=text)


def configure_logging(debug: bool) -> None:
    """Our logs at INFO (DEBUG with --debug), known library noise quiet, and stdout left to the command's output."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="[%(name)s] %(message)s")
    # TRL's own default (gradient_checkpointing=True) trips transformers' rename warning on every run.
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing. is deprecated.*")
    warnings.filterwarnings("ignore", message=".*Failed to load CPU gemm_4bit_forward.*")
    # bitsandbytes logs that it found no Hub kernel for CPU 4-bit matmuls; its own kernels then run, so say nothing.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # accelerate imports DeepSpeed whenever it is installed (extract_model_from_parallel, on every SFTTrainer), and
    # DeepSpeed's logger writes to stdout ("Setting accelerator to CPU" on import). A logger filter outlives the
    # handler DeepSpeed adds at import, so its records reach stderr only and `--format json` stays parseable.
    logging.getLogger("DeepSpeed").addFilter(_to_stderr)


def _to_stderr(record: logging.LogRecord) -> bool:
    print(f"[DeepSpeed] {record.getMessage()}", file=sys.stderr)
    return False
