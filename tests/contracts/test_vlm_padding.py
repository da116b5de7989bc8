"""VLM batches are padded on the right: TRL's vision collator pads with the processor's tokenizer, whose padding side
the loader sets (a causal LM's collator pads right on its own)."""

from __future__ import annotations

import torch
from helpers.prepared import prepared_trainer


def colour_rows(directory, replies):
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(directory / "red.png")
    user = [{"type": "image"}, {"type": "text", "text": "What colour is this?"}]
    rows = []
    for reply in replies:
        messages = [
            {"role": "user", "content": user},
            {"role": "assistant", "content": [{"type": "text", "text": reply}]},
        ]
        rows.append({"images": [str(directory / "red.png")], "messages": messages})
    return rows


def test_vlm_batches_pad_on_the_right_after_each_rows_text(tmp_path, vlm_dirs):
    rows = colour_rows(tmp_path, ["Red.", "It is red, a bright and warm red, like a ripe tomato in the sun."])
    trainer = prepared_trainer(tmp_path, vlm_dirs["llava"], rows, max_length=None, per_device_train_batch_size=2)
    assert trainer.processing_class.tokenizer.padding_side == "right"
    mask = next(iter(trainer.get_train_dataloader()))["attention_mask"]
    assert mask.shape[0] == 2 and not mask.all()  # the shorter row was padded
    ones = mask.sum(dim=1, keepdim=True)
    positions = torch.arange(mask.shape[1]).unsqueeze(0)
    assert torch.equal(mask.bool(), positions < ones)  # every row: its tokens first, then padding
