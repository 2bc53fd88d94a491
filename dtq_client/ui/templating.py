"""The Jinja environment: the package's templates, autoescaped, with the formatting filters.

Autoescape is on for every template, whatever its name: task data is user
input, and a payload holding ``<script>`` must reach the page as text.
Undefined names fail loudly (``StrictUndefined``) instead of rendering empty.
"""

from __future__ import annotations

from urllib.parse import quote

import jinja2
from starlette.templating import Jinja2Templates

from dtq_client import output
from dtq_client.ui import present


def _path_segment(value: object) -> str:
    """``value`` quoted as one URL path segment (a ``/`` in it is escaped too)."""
    return quote(str(value), safe="")


def create_templates() -> Jinja2Templates:
    """The templates the pages render."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("dtq_client.ui", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        when=present.fmt_time,
        age=present.fmt_age,
        seconds=present.fmt_seconds,
        size=present.fmt_bytes,
        limit=present.fmt_limit,
        timing=present.fmt_timing,
        some=output.format_some,
        path=_path_segment,
    )
    return Jinja2Templates(env=env)
