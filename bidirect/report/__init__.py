"""Presentation: the tables of a run or a sweep (tables.py) and `bidirect report`'s Markdown with figures
(markdown.py)."""
