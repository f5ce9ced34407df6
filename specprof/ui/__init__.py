"""The user interface: the Typer CLI, terminal rendering (Rich), plots and the HTML page.

The top layer: it may import anything below it, and nothing below imports it.
"""
