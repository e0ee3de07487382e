"""A table and its claims as one self-contained HTML page, for Snakemake's report.

The report shows images and HTML inline but offers CSV and Markdown only as downloads, so
each table's Markdown (the same files as under reports/) is rendered here with
Python-Markdown's `tables` extension.
"""

from __future__ import annotations

import html

import markdown

STYLE = """
body { font-family: sans-serif; font-size: 14px; margin: 1.5em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #eee; }
"""


def table_page(title: str, *markdown_texts: str) -> str:
    """One HTML page: the title, then each Markdown text in order."""
    body = "\n".join(markdown.markdown(text, extensions=["tables"]) for text in markdown_texts)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )
