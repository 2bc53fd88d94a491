"""DTQ client."""
