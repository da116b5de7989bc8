"""Vision-language families with their real processor templates and special tokens: with assistant_only_loss the
real SFTTrainer (its vision collator, after image-token expansion) trains the replies and the end of turn only, and
TRL's training template renders like the model's own. Qwen2.5-VL is not here: its processor needs torchvision."""

from __future__ import annotations

import pytest
from helpers.chat_families import VLM_FAMILIES, build_family_vlm, chat_family, recipe_chat_keys, stop_ids
from helpers.prepared import prepared_trainer, trained_spans

from sft_recipes.template_fidelity import SAMPLE_CONVERSATIONS, render_differences, trl_training_template

REPLIES = ("Red.", "A square.")
# What each family's training template trains around one reply: (before, after).
TRAINED_AROUND = {
    "smolvlm2": (" ", "<end_of_utterance>\n"),
    "gemma-3": ("", "<end_of_turn>\n"),
    "llava-1.5": ("", " "),
}
LLAVA_SPACE = pytest.mark.xfail(
    strict=True,
    reason="llava-hf/llava-1.5-7b-hf's template marks the space after a reply, which the tokenizer merges into the "
    "next turn's ' USER' header, so that header is trained",
)
LLAVA_NO_EOS = pytest.mark.xfail(
    strict=True,
    reason="llava-hf/llava-1.5-7b-hf's template renders no </s> after a reply: the model is never trained to stop",
)


def image_chat(image: str) -> dict:
    return {
        "images": [image],
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is this?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": REPLIES[0]}]},
            {"role": "user", "content": [{"type": "text", "text": "And the shape?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": REPLIES[1]}]},
        ],
    }


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    """name -> (trainer, the first batch its own dataloader and vision collator build, the VLM's directory)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("vlm-families")
    Image.new("RGB", (32, 32), "red").save(root / "red.png")
    built = {}
    for name in VLM_FAMILIES:
        model_dir = build_family_vlm(name, root / name)
        keys = {**recipe_chat_keys(name), "assistant_only_loss": True, "max_length": None}
        trainer = prepared_trainer(root / f"{name}-run", model_dir, [image_chat(str(root / "red.png"))], **keys)
        built[name] = trainer, next(iter(trainer.get_train_dataloader())), model_dir
    return built


def _spans(trainer, batch) -> list[str]:
    tokenizer = trainer.processing_class.tokenizer
    return trained_spans(tokenizer, batch["input_ids"][0].tolist(), batch["labels"][0].tolist())


def marked(mark) -> list:
    return [pytest.param(name, marks=mark) if name == "llava-1.5" else name for name in VLM_FAMILIES]


@pytest.mark.parametrize("name", marked(LLAVA_SPACE))
def test_trained_tokens_are_exactly_the_replies_and_their_end_of_turn(name, batches):
    trainer, batch, _ = batches[name]
    image_id = trainer.processing_class.tokenizer.convert_tokens_to_ids(chat_family(name).named_tokens["image_token"])
    assert (batch["input_ids"] == image_id).sum() > 1, "the image was not expanded into its tokens"
    before, after = TRAINED_AROUND[name]
    assert _spans(trainer, batch) == [before + reply + after for reply in REPLIES]


@pytest.mark.parametrize("name", marked(LLAVA_NO_EOS))
def test_the_end_of_turn_token_closing_each_reply_is_trained_and_generation_stops_at_it(name, batches):
    from trl.chat_template_utils import is_chat_template_stop_token_trained

    trainer, batch, model_dir = batches[name]
    processor = trainer.processing_class
    end_of_turn = chat_family(name).end_of_turn
    assert end_of_turn is not None, "the template closes no turn with a token"
    end = processor.tokenizer.convert_tokens_to_ids(end_of_turn)
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    assert int(((ids == end) & (labels == end)).sum()) == len(REPLIES)
    assert end in stop_ids(model_dir, processor.tokenizer)
    assert is_chat_template_stop_token_trained(processor, trainer.chat_template)


def test_llava_renders_no_end_of_sequence_after_a_reply(batches):
    trainer, batch, _ = batches["llava-1.5"]
    tokenizer = trainer.processing_class.tokenizer
    assert tokenizer.eos_token_id not in batch["input_ids"][0].tolist()
    assert tokenizer.decode(batch["input_ids"][0]).endswith("ASSISTANT: A square. ")


@pytest.mark.parametrize("name", VLM_FAMILIES)
def test_the_template_trl_trains_with_renders_like_the_models_own(name, batches):
    processor = batches[name][0].processing_class
    image_turn = ({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},)
    with_image = image_turn + ({"role": "assistant", "content": "Red."}, {"role": "user", "content": "Shape?"})
    conversations = [*SAMPLE_CONVERSATIONS, (*with_image, {"role": "assistant", "content": "Square."})]
    assert render_differences(processor, trl_training_template(processor), conversations) == []
