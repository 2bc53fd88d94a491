"""Option types the three commands (``dtq-server``, ``dtq-worker``, ``dtq-client``) share."""

from __future__ import annotations

import math
from typing import Any

import click


class FiniteFloat(click.FloatRange):
    """click's ``FloatRange`` without NaN and the infinities.

    Its bounds let NaN through (every comparison with NaN is false), and
    ``inf`` where there is no upper bound: ``--heartbeat-timeout nan`` started a
    coordinator that never declared a node dead, ``--refresh nan`` a web page
    that refreshed without pause, ``--delay inf`` a traceback.
    """

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number
