"""The data layer: training data from files, hub ids, mixtures or a prepared set, converted row by row for
SFTTrainer (formats, tool calls, images, preference rows)."""
