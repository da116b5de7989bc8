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
    "llava-1.5": ("", "</s>"),
}
# llava-hf's LLaVA-1.5 template closes no turn with a token (it renders `reply `, so a model trained on it never
# learns to stop, and its marked space merges into the next ' USER' header): the recipe trains with
# recipes/templates/llava-1.5.jinja, which ends each reply with </s> as the original LLaVA-1.5 training did.
RECIPE_END_OF_TURN = {"llava-1.5": "</s>"}


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


@pytest.mark.parametrize("name", VLM_FAMILIES)
def test_trained_tokens_are_exactly_the_replies_and_their_end_of_turn(name, batches):
    trainer, batch, _ = batches[name]
    image_id = trainer.processing_class.tokenizer.convert_tokens_to_ids(chat_family(name).named_tokens["image_token"])
    assert (batch["input_ids"] == image_id).sum() > 1, "the image was not expanded into its tokens"
    before, after = TRAINED_AROUND[name]
    assert _spans(trainer, batch) == [before + reply + after for reply in REPLIES]


@pytest.mark.parametrize("name", VLM_FAMILIES)
def test_the_end_of_turn_token_closing_each_reply_is_trained_and_generation_stops_at_it(name, batches):
    from trl.chat_template_utils import is_chat_template_stop_token_trained

    trainer, batch, model_dir = batches[name]
    processor = trainer.processing_class
    end_of_turn = RECIPE_END_OF_TURN.get(name, chat_family(name).end_of_turn)
    assert end_of_turn is not None, "the template closes no turn with a token"
    end = processor.tokenizer.convert_tokens_to_ids(end_of_turn)
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    assert int(((ids == end) & (labels == end)).sum()) == len(REPLIES)
    assert end in stop_ids(model_dir, processor.tokenizer)
    assert is_chat_template_stop_token_trained(processor, trainer.chat_template)


def test_llava_trains_with_its_recipe_template_which_ends_each_reply_with_eos(batches):
    trainer, batch, _ = batches["llava-1.5"]
    tokenizer = trainer.processing_class.tokenizer
    ids = batch["input_ids"][0].tolist()
    assert ids.count(tokenizer.eos_token_id) == len(REPLIES)
    assert tokenizer.decode(ids).endswith("ASSISTANT: A square.</s>")


def conversations_with_an_image() -> list:
    image_turn = ({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},)
    with_image = image_turn + ({"role": "assistant", "content": "Red."}, {"role": "user", "content": "Shape?"})
    return [*SAMPLE_CONVERSATIONS, (*with_image, {"role": "assistant", "content": "Square."})]


@pytest.mark.parametrize("name", [name for name in VLM_FAMILIES if name not in RECIPE_END_OF_TURN])
def test_the_template_trl_trains_with_renders_like_the_models_own(name, batches):
    processor = batches[name][0].processing_class
    assert render_differences(processor, trl_training_template(processor), conversations_with_an_image()) == []


def test_llavas_recipe_template_differs_from_the_shipped_one_only_by_eos_after_each_reply(batches):
    """The knowing difference of recipes/templates/llava-1.5.jinja: `reply</s>` where llava-hf renders `reply `."""
    processor = batches["llava-1.5"][0].processing_class
    shipped, ours = chat_family("llava-1.5").chat_template, trl_training_template(processor)
    conversations = conversations_with_an_image()
    differences = render_differences(processor, ours, conversations, inference_template=shipped)
    assert len(differences) == len(conversations)
    for difference in differences:
        assert difference.training.startswith("</s>") and difference.inference.startswith(" ")
    for messages in conversations:
        typed = [
            {**m, "content": [{"type": "text", "text": m["content"]}]} if isinstance(m["content"], str) else m
            for m in messages
        ]
        inference = processor.apply_chat_template(typed, chat_template=shipped, tokenize=False)
        training = processor.apply_chat_template(typed, chat_template=ours, tokenize=False)
        assert training.replace("</s>", " ") == inference
