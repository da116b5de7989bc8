"""The data layer: files, hub ids, mixtures or a prepared set, checked and converted row by row for SFTTrainer."""
