"""The memory planner: predicts peak GPU memory per device for a recipe from config.json (see plan.md)."""
