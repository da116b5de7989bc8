"""`sft-recipes validate`: every check of a recipe that needs no weights, run as one rule table."""
