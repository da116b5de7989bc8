"""The loss mask covers exactly the right tokens, for every data format, checked against hand-written text.

Each expectation lists the runs of trained tokens, decoded. The tiny tokenizer renders ChatML; its EOS and the
template's end of turn are both <|im_end|>, its pad <|endoftext|>.
"""

from __future__ import annotations

import pytest
from helpers.prepared import prepared_trainer, trained_spans

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}

CASES = {
    "messages, assistant-only: the reply and its <|im_end|>, never the system or user turn": (
        [
            {
                "messages": [
                    {"role": "system", "content": "You are terse."},
                    {"role": "user", "content": "Capital of France?"},
                    {"role": "assistant", "content": "Paris."},
                ]
            }
        ],
        {"assistant_only_loss": True},
        [["Paris.<|im_end|>"]],
    ),
    "multi-turn: every assistant turn is trained, not only the last": (
        [
            {
                "messages": [
                    {"role": "user", "content": "2+2?"},
                    {"role": "assistant", "content": "4."},
                    {"role": "user", "content": "And 3+3?"},
                    {"role": "assistant", "content": "6."},
                ]
            }
        ],
        {"assistant_only_loss": True},
        [["4.<|im_end|>", "6.<|im_end|>"]],
    ),
    "tool calls: the call and the final answer are trained, the tool result and tool specs are not": (
        [
            {
                "messages": [
                    {"role": "user", "content": "Weather in Oslo?"},
                    {"role": "assistant", "content": "", "tool_calls": [CALL]},
                    {"role": "tool", "name": "get_weather", "content": "-3 C, snow"},
                    {"role": "assistant", "content": "It is snowing."},
                ],
                "tools": TOOLS,
            }
        ],
        {"assistant_only_loss": True, "max_length": 512},
        [
            [
                '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>',
                "It is snowing.<|im_end|>",
            ]
        ],
    ),
    "messages without assistant_only_loss: the whole conversation (all but the first token)": (
        [{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4."}]}],
        {},
        [["user\n2+2?<|im_end|>\n<|im_start|>assistant\n4.<|im_end|>\n"]],
    ),
    "prompt-completion strings: the completion plus the EOS TRL appends": (
        [
            {"prompt": "The sky is", "completion": " blue."},
            {"prompt": "A triangle has", "completion": " three sides."},
        ],
        {},
        [[" blue.<|im_end|>"], [" three sides.<|im_end|>"]],
    ),
    # Completion-only loss trains the completion as the template renders it, newline after <|im_end|> included.
    "conversational prompt-completion: the rendered completion": (
        [
            {
                "prompt": [{"role": "user", "content": "Name a colour."}],
                "completion": [{"role": "assistant", "content": "Red."}],
            }
        ],
        {},
        [["Red.<|im_end|>\n"]],
    ),
    "conversational prompt-completion, assistant-only: the reply and its <|im_end|>": (
        [
            {
                "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
                "completion": [{"role": "assistant", "content": "Red."}],
            }
        ],
        {"assistant_only_loss": True},
        [["Red.<|im_end|>"]],
    ),
    "text: every token but the first, with the EOS TRL appends": (
        [{"text": "The quick brown fox."}],
        {},
        [[" quick brown fox.<|im_end|>"]],
    ),
    "ShareGPT, converted: every gpt turn with its <|im_end|>": (
        [
            {
                "conversations": [
                    {"from": "system", "value": "Be brief."},
                    {"from": "human", "value": "What is 7*6?"},
                    {"from": "gpt", "value": "42."},
                    {"from": "human", "value": "And 6*7?"},
                    {"from": "gpt", "value": "Also 42."},
                ]
            }
        ],
        {"assistant_only_loss": True},
        [["42.<|im_end|>", "Also 42.<|im_end|>"]],
    ),
    "Alpaca, converted: the output with its <|im_end|>, never the instruction or input": (
        [
            {"instruction": "Translate to German.", "input": "Good morning", "output": "Guten Morgen"},
            {"instruction": "Name the largest planet.", "input": "", "output": "Jupiter"},
        ],
        {"assistant_only_loss": True},
        [["Guten Morgen<|im_end|>"], ["Jupiter<|im_end|>"]],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_loss_mask_covers_exactly_the_expected_tokens(case, tmp_path, llama_dir):
    rows, keys, expected = CASES[case]
    keys = {"max_length": 128, **keys}
    trainer = prepared_trainer(tmp_path, llama_dir, rows, **keys)
    prepared = list(trainer.train_dataset)
    assert len(prepared) == len(rows), "an example was dropped"
    spans = [trained_spans(trainer.processing_class, row["input_ids"], row["labels"]) for row in prepared]
    assert spans == expected


def test_masks_survive_collation_unchanged_apart_from_padding(tmp_path, llama_dir):
    rows, keys, expected = CASES["multi-turn: every assistant turn is trained, not only the last"]
    short = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    trainer = prepared_trainer(tmp_path, llama_dir, [*rows, short], per_device_train_batch_size=2, **keys)
    batch = next(iter(trainer.get_train_dataloader()))
    spans = sorted(
        trained_spans(trainer.processing_class, ids[mask.bool()].tolist(), labels[mask.bool()].tolist())
        for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True)
    )
    assert spans == sorted([expected[0], ["Hello.<|im_end|>"]])
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


@pytest.fixture(scope="module")
def pad_is_eos_dir(tmp_path_factory):
    from sft_recipes.tiny import build_causal_lm, build_tokenizer

    tokenizer = build_tokenizer(pad_token="<|im_end|>")
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    return build_causal_lm("llama", tmp_path_factory.mktemp("pad-is-eos"), tokenizer=tokenizer)


@pytest.mark.parametrize(
    "rows",
    [
        [{"text": "The quick brown fox."}, {"text": "A much longer sentence that needs padding after the short one."}],
        [
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
            {
                "messages": [
                    {"role": "user", "content": "Capital of France?"},
                    {"role": "assistant", "content": "Paris!"},
                ]
            },
        ],
    ],
    ids=["text", "messages"],
)
def test_eos_stays_trained_when_the_pad_token_is_the_eos(rows, tmp_path, pad_is_eos_dir):
    keys = {"assistant_only_loss": True} if "messages" in rows[0] else {}
    trainer = prepared_trainer(tmp_path, pad_is_eos_dir, rows, per_device_train_batch_size=2, **keys)
    eos = trainer.processing_class.eos_token_id
    batch = next(iter(trainer.get_train_dataloader()))
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True):
        real = int(mask.sum())
        assert mask[:real].all() and not mask[real:].any(), mask  # right padding: the example first, then padding
        eos_positions = (ids[:real] == eos).nonzero().flatten().tolist()
        assert eos_positions, "no EOS in the example"
        last = eos_positions[-1]
        assert labels[last] == eos, "the example's final EOS is masked"
        assert (labels[real:] == -100).all() and (ids[real:] == eos).all()  # padding: same id, masked by position
    assert (batch["attention_mask"] == 0).any(), "the batch needed padding for this test to mean anything"
