"""Rewrite an old recipe (older TRL, alignment-handbook, open-r1) into today's keys, comments and order kept."""
