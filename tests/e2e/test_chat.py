"""`sft-recipes chat`: after the demo training it answers the demo's questions and stops at the end of turn, in
one-shot and interactive mode (driven through a stdin pipe), with images for VLM runs and clean errors."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys

import pytest

from sft_recipes.cli import main
from sft_recipes.tiny import ANSWER_TEMPLATE, CAPITALS, DEMO_PROMPTS

QUESTIONS = ("What is the capital of Kenya?", *DEMO_PROMPTS)


def expected(prompt: str) -> str:
    country = next(c for c in CAPITALS if c in prompt)
    return ANSWER_TEMPLATE.format(country=country, city=CAPITALS[country])


def chat(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["chat", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def prompts(*questions: str) -> list[str]:
    return [arg for q in questions for arg in ("--prompt", q)]


def test_chat_answers_the_demo_questions_after_the_demo_training_and_nothing_more(capsys, demo_run_dir, demo_base_dir):
    code, out, _ = chat(capsys, demo_run_dir, *prompts(*QUESTIONS), "--max_new_tokens", "32")
    assert code == 0
    # One block per prompt, in order, each exactly the trained answer: any text after <|im_end|> would show here.
    assert out == "\n\n".join(expected(q) for q in QUESTIONS) + "\n"
    code, before, _ = chat(capsys, demo_base_dir, *prompts(*QUESTIONS), "--max_new_tokens", "32")
    assert code == 0 and before.split("\n\n") != out.split("\n\n")  # the untrained model does not know them


def test_generation_ends_at_the_end_of_turn_token(demo_run_dir):
    from sft_recipes.trained import load_trained

    run = load_trained(demo_run_dir)
    end = run.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert run.eos_token_ids == [end]
    ids = run.generate_ids([{"role": "user", "content": QUESTIONS[0]}], max_new_tokens=32)
    assert ids[-1] == end and end not in ids[:-1] and len(ids) < 32


def test_every_eos_id_of_the_generation_config_stops_generation(tmp_path, capsys, demo_run_dir):
    """A base tokenizer whose eos is <|endoftext|> (Qwen base): the chat end-of-turn stops only through the list."""
    run_dir = shutil.copytree(demo_run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoint-*"))
    tokenizer_config = json.loads((run_dir / "tokenizer_config.json").read_text())
    tokenizer_config["eos_token"] = "<|endoftext|>"
    (run_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    vocab = json.loads((run_dir / "tokenizer.json").read_text())["added_tokens"]
    ids = {token["content"]: token["id"] for token in vocab}
    generation = json.loads((run_dir / "generation_config.json").read_text())
    generation["eos_token_id"] = [ids["<|endoftext|>"], ids["<|im_end|>"]]
    (run_dir / "generation_config.json").write_text(json.dumps(generation))
    code, out, _ = chat(capsys, run_dir, *prompts(QUESTIONS[0]), "--max_new_tokens", "32")
    assert code == 0 and out == expected(QUESTIONS[0]) + "\n"


def test_interactive_chat_keeps_history_until_reset_and_stops_at_exit(demo_run_dir):
    turns = [QUESTIONS[0], "What is the capital of France?", "/reset", "What is the capital of France?", "/exit"]
    stdin = "\n".join([*turns, "What is the capital of Peru?"]) + "\n"
    done = subprocess.run(
        [sys.executable, "-m", "sft_recipes", "--debug", "chat", str(demo_run_dir), "--max_new_tokens", "24"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    answers = done.stdout.splitlines()
    assert len(answers) == 3, answers  # three questions before /exit; the one after it is never read
    assert answers[0] == expected(QUESTIONS[0]) and answers[2] == expected("France")
    lengths = [int(n) for n in re.findall(r"(\d+) prompt tokens", done.stderr)]
    # The second question is sent after the first exchange; after /reset it is sent alone, like the first one.
    assert len(lengths) == 3 and lengths[1] > lengths[0] + 5 and abs(lengths[2] - lengths[0]) <= 2


def test_interactive_chat_streams_the_answer_and_ends_at_end_of_input(monkeypatch, capsys, demo_run_dir):
    monkeypatch.setattr(sys, "stdin", io.StringIO(QUESTIONS[1] + "\n"))  # no /exit: end of input quits
    code, out, err = chat(capsys, demo_run_dir, "--max_new_tokens", "24")
    assert code == 0 and out == expected(QUESTIONS[1]) + "\n"  # printed by the streamer alone
    assert "Chatting with run" in err


def test_system_prompt_goes_first_in_every_conversation(demo_run_dir):
    from sft_recipes.chat import Conversation
    from sft_recipes.trained import load_trained

    conversation = Conversation(load_trained(demo_run_dir), system="Answer briefly.")
    conversation.ask(QUESTIONS[0], max_new_tokens=24)
    messages = conversation.messages([*conversation.turns, ("user", "again")])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == "Answer briefly." and messages[2]["content"] == expected(QUESTIONS[0])
    conversation.reset()
    assert [m["role"] for m in conversation.messages([("user", "q")])] == ["system", "user"]


@pytest.fixture
def image_path(tmp_path):
    from PIL import Image

    path = tmp_path / "red.png"
    Image.new("RGB", (40, 30), "red").save(path)
    return path


def test_vlm_adapter_run_chats_about_the_image_through_its_processor(capsys, image_path, vlm_lora_run_dir):
    from sft_recipes.chat import Conversation, open_image
    from sft_recipes.trained import load_trained

    out_dir = vlm_lora_run_dir
    run = load_trained(out_dir)
    assert run.is_vlm and run.layout.weights == "adapter"
    assert type(run.processing_class).__name__ == "LlavaProcessor"
    question = "What colour is this?"
    conversation = Conversation(run, image=open_image(str(image_path)))
    inputs = run.encode(conversation.messages([("user", question), ("assistant", "A"), ("user", "B")]))
    image_token = run.tokenizer.convert_tokens_to_ids("<image>")
    assert inputs["pixel_values"].shape[0] == 1  # one image, on the first user turn only
    assert int((inputs["input_ids"] == image_token).sum()) == 16  # (32 / 8)^2 patches
    code, out, _ = chat(
        capsys, out_dir, "--image", image_path, *prompts("What colour is this?"), "--max_new_tokens", "8"
    )
    alone = Conversation(run, image=open_image(str(image_path))).ask("What colour is this?", max_new_tokens=8)
    assert code == 0 and out == alone + "\n"


def test_image_for_a_text_only_run_is_a_clear_error(capsys, demo_run_dir, image_path):
    code, out, err = chat(capsys, demo_run_dir, "--image", image_path, *prompts("Hi"))
    assert code == 2 and out == ""
    assert "--image" in err and "text-only" in err and "Traceback" not in err


def test_missing_image_and_bad_max_new_tokens_fail_before_loading(capsys, tmp_path, demo_run_dir):
    code, _, err = chat(capsys, demo_run_dir, "--image", tmp_path / "none.png", *prompts("Hi"))
    assert code == 2 and "none.png does not exist" in err
    code, _, err = chat(capsys, demo_run_dir, "--max_new_tokens", "0", *prompts("Hi"))
    assert code == 2 and "--max_new_tokens" in err


def test_chat_on_a_folder_that_is_not_a_run_exits_2_without_traceback(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    done = subprocess.run(
        [sys.executable, "-m", "sft_recipes", "chat", str(tmp_path), "--prompt", "Hi"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert str(tmp_path) in done.stderr and "not a run" in done.stderr
