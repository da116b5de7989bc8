"""The data layer: training data loaded from files, hub ids and mixtures, and converted row by row for SFTTrainer."""
