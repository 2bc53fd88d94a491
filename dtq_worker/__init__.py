"""DTQ worker node."""
