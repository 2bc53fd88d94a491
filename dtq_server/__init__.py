"""DTQ coordinator."""
