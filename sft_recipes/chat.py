"""Talk to a trained run: one answer per --prompt for scripts, or an interactive, streaming, multi-turn chat.

Usage: sft-recipes chat OUTPUT_DIR [--prompt TEXT]... [--system TEXT] [--image PATH] [--max_new_tokens N] [--base M]"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from sft_recipes.arguments import command_parser
from sft_recipes.environment import require_extra
from sft_recipes.errors import error
from sft_recipes.trained import load_trained

logger = logging.getLogger("sft_recipes")
KEYS = "/reset starts a new conversation, /exit (or Ctrl-D) quits"


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("chat", __doc__)
    parser.epilog = f"Without --prompt: an interactive chat on stdin; {KEYS}."
    parser.add_argument("output_dir", help="a run's output_dir, its merged/ folder or a checkpoint-N/ folder")
    parser.add_argument(
        "--prompt",
        action="append",
        metavar="TEXT",
        help="answer TEXT and exit; repeat it for several answers (each its own conversation), printed in order",
    )
    parser.add_argument("--system", metavar="TEXT", help="a system prompt at the start of every conversation")
    parser.add_argument("--image", metavar="PATH", help="an image for the first user turn (vision-language runs)")
    parser.add_argument("--max_new_tokens", type=int, default=256, metavar="N", help="most tokens per answer (256)")
    parser.add_argument("--base", metavar="MODEL", help="the adapter's base model, when its recorded one is elsewhere")
    return parser


class Conversation:
    """One chat's turns: an optional system prompt, then user and assistant texts; the image goes with the first
    user turn sent. The oldest turns are dropped when the context would overflow."""

    def __init__(self, run: Any, system: str | None = None, image: Any = None):
        self.run, self.system, self.image = run, system, image
        self.turns: list[tuple[str, str]] = []

    def reset(self) -> None:
        self.turns = []

    def messages(self, turns: list[tuple[str, str]]) -> list[dict[str, Any]]:
        pairs = ([("system", self.system)] if self.system else []) + turns
        if not self.run.is_vlm:
            return [{"role": role, "content": text} for role, text in pairs]
        messages: list[dict[str, Any]] = []
        image = self.image
        for role, text in pairs:
            parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
            if role == "user" and image is not None:
                parts.insert(0, {"type": "image", "image": image})
                image = None
            messages.append({"role": role, "content": parts})
        return messages

    def ask(self, prompt: str, max_new_tokens: int, streamer: Any = None) -> str:
        turns = [*self.turns, ("user", prompt)]
        limit = self.run.context_length
        # Room kept for the answer: all of max_new_tokens, up to half the context.
        reserve = min(max_new_tokens, limit // 2) if limit else 0
        while True:
            messages = self.messages(turns)
            length = int(self.run.encode(messages)["input_ids"].shape[1])
            if limit is None or length + reserve <= limit or len(turns) < 3:
                break
            turns = turns[2:]  # the oldest user/assistant exchange
            logger.warning("The conversation outgrew the %d-token context: dropped its oldest exchange", limit)
        logger.debug("%d prompt tokens (%d turns)", length, len(turns))
        budget = max(1, min(max_new_tokens, limit - length)) if limit else max_new_tokens
        answer = self.run.reply(messages, budget, streamer=streamer)
        self.turns = [*turns, ("assistant", answer)]
        return answer


def open_image(path: str) -> Any:
    if not Path(path).is_file():
        raise error("--image", f"{path} does not exist", "pass the path of an image file")
    require_extra("PIL", "vision", "--image")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise error("--image", f"{path} is not an image PIL can read ({err})", "pass a PNG or JPEG") from None


def interactive(conversation: Conversation, max_new_tokens: int) -> int:
    """Read turns from stdin until /exit or end of input; answers stream to stdout, everything else to stderr."""
    from transformers import TextStreamer

    tty = sys.stdin.isatty()
    streamer = TextStreamer(conversation.run.tokenizer, skip_prompt=True, skip_special_tokens=True)
    print(f"Chatting with {conversation.run.describe()}.\n{KEYS}.", file=sys.stderr)
    while True:
        try:
            line = input("you> " if tty else "").strip()
        except EOFError:
            return 0
        if line == "/exit":
            return 0
        if line == "/reset":
            conversation.reset()
            print("(new conversation)", file=sys.stderr)
        elif line.startswith("/"):
            print(f"unknown command {line}: {KEYS}", file=sys.stderr)
        elif line:
            try:
                conversation.ask(line, max_new_tokens, streamer=streamer)
            except KeyboardInterrupt:
                print("\n(answer interrupted)", file=sys.stderr)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.max_new_tokens < 1:
        raise error("--max_new_tokens", f"{args.max_new_tokens} is below 1", "pass a positive number")
    image = open_image(args.image) if args.image else None
    run = load_trained(args.output_dir, base=args.base)
    if image is not None and not run.is_vlm:
        raise error(
            "--image",
            f"{args.output_dir} is a text-only model ({run.layout.config.get('model_type')}): it takes no images",
            "drop --image, or chat with a vision-language run",
        )
    if not args.prompt:
        return interactive(Conversation(run, args.system, image), args.max_new_tokens)
    for number, prompt in enumerate(args.prompt):
        answer = Conversation(run, args.system, image).ask(prompt, args.max_new_tokens)
        print(("\n" if number else "") + answer, flush=True)
    return 0
