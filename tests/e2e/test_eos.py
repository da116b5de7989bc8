"""Models learn to stop: after a short fine-tune on the demo data, generation ends at <|im_end|> on the training
prompts, with the generation config `train` saves. The untrained model does not, so the check can fail."""

from __future__ import annotations

from helpers.runs import train

from sft_recipes.tiny import DEMO_PROMPTS

MAX_NEW_TOKENS = 24


def generations(model_dir, tokenizer_dir=None):
    """(generated ids, the id of <|im_end|>) for each demo prompt, greedy, with the model's generation config."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    outputs = []
    for prompt in DEMO_PROMPTS:
        inputs = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        generated = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        outputs.append(generated[0, inputs["input_ids"].shape[1] :].tolist())
    return outputs, end


def stops(ids, end):
    return len(ids) < MAX_NEW_TOKENS and ids[-1] == end and end not in ids[:-1]


def test_generation_stops_at_end_of_turn_after_a_short_fine_tune(tmp_path, llama_dir, demo_data_path):
    before, end = generations(llama_dir)
    assert not all(stops(ids, end) for ids in before), "the untrained model already stops: the test proves nothing"
    out = train(
        tmp_path,
        model_name_or_path=str(llama_dir),
        dataset_name=str(demo_data_path),
        assistant_only_loss=True,
        per_device_train_batch_size=16,
        max_steps=40,
        learning_rate=1.0e-2,
        lr_scheduler_type="constant",
    )
    after, end = generations(out)
    assert all(stops(ids, end) for ids in after), after
