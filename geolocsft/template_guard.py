"""A model's embedded chat template is untrusted code: Jinja's immutable sandbox stops it from
reaching Python objects, and this module bounds what it may cost. A template that loops without
end, multiplies strings into gigabytes or doubles a string in a loop fails within a few seconds
with one TemplateLimitError, instead of hanging the CLI or freezing the app.

In process (the packaged app has no Python to start a child with): the template text has a size
cap; string repetition, powers, %-formats and calls with absurd sizes are refused before they run;
while it renders, a trace hook on this thread checks the deadline and the process's resident
memory (Linux: /proc/self/statm) at every line of the compiled template; output has a size cap.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import time

MAX_TEMPLATE_CHARS = 256 * 1024  # real chat templates are 1-20 KB
MAX_OUTPUT_CHARS = 1 << 20  # a rendered prompt is a few KB
MAX_VALUE_CHARS = 1 << 20  # one string or list a template builds
MAX_SECONDS = 3.0
MAX_EXTRA_RSS = 512 << 20  # memory a render may add to the process

_BIG_WIDTH = re.compile(r"\d{7,}")  # a format width or precision of a million or more


class TemplateLimitError(RuntimeError):
    """The template went past a limit (size, time, memory); the message says which."""


def _size(value) -> int | None:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else None


def guarded_environment(**options):
    """An ImmutableSandboxedEnvironment that refuses single operations of absurd size."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GuardedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "%", "+"})

        def call_binop(self, context, operator, left, right):
            if operator == "*":
                for seq, times in ((left, right), (right, left)):
                    if _size(seq) is not None and isinstance(times, int) and \
                            _size(seq) * max(times, 0) > MAX_VALUE_CHARS:
                        raise TemplateLimitError(f"the chat template builds a value of "
                                                 f"{_size(seq) * times:,} items")
            elif operator == "**":
                if isinstance(right, (int, float)) and abs(right) > 256:
                    raise TemplateLimitError(f"the chat template raises to the power {right}")
            elif operator == "%":
                if isinstance(left, str) and _BIG_WIDTH.search(left):
                    raise TemplateLimitError("the chat template formats with an absurd width")
            elif operator == "+":
                if _size(left) is not None and _size(right) is not None and \
                        _size(left) + _size(right) > MAX_VALUE_CHARS:
                    raise TemplateLimitError("the chat template builds a value over "
                                             f"{MAX_VALUE_CHARS:,} items")
            return super().call_binop(context, operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's signature)
            _check_args(args, kwargs)
            if isinstance(__obj, str) or getattr(__obj, "__self__", None).__class__ is str:
                fmt = __obj if isinstance(__obj, str) else __obj.__self__
                if _BIG_WIDTH.search(fmt):
                    raise TemplateLimitError("the chat template formats with an absurd width")
            return super().call(__context, __obj, *args, **kwargs)

    env = GuardedEnvironment(**options)
    # Filters are called directly, not through call(): `'a' | center(10**10)` is one C call.
    env.filters = {name: _checked(f) for name, f in env.filters.items()}
    return env


def _check_args(args, kwargs) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_VALUE_CHARS:
            raise TemplateLimitError(f"the chat template calls with the size {value:,}")
        if isinstance(value, str) and _BIG_WIDTH.search(value) and ("{" in value or "%" in value):
            raise TemplateLimitError("the chat template formats with an absurd width")


def _checked(function):
    @functools.wraps(function)  # keeps Jinja's pass_context/pass_environment marks
    def checked(*args, **kwargs):
        _check_args(args, kwargs)
        return function(*args, **kwargs)

    return checked


def _rss_reader():
    """Current resident memory in bytes, or None where /proc is not there."""
    try:
        handle = open("/proc/self/statm", "rb", buffering=0)
    except OSError:
        return None
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        handle.seek(0)
        return int(handle.read().split()[1]) * page

    rss.close = handle.close
    return rss


def render_guarded(env, template_text: str, *, max_seconds: float = MAX_SECONDS,
                   max_extra_rss: int = MAX_EXTRA_RSS, **variables) -> str:
    """Render `template_text` in `env` (from guarded_environment) within the limits."""
    if len(template_text) > MAX_TEMPLATE_CHARS:
        raise TemplateLimitError(f"the chat template is {len(template_text):,} characters, over "
                                 f"the limit of {MAX_TEMPLATE_CHARS:,}")
    template = env.from_string(template_text)
    rss = _rss_reader()
    rss_limit = rss() + max_extra_rss if rss else None
    deadline = time.monotonic() + max_seconds

    def on_line(frame, event, arg):
        if time.monotonic() > deadline:
            raise TemplateLimitError(f"the chat template did not finish in {max_seconds:g} s")
        if rss_limit is not None and rss() > rss_limit:
            raise TemplateLimitError(f"the chat template used over {max_extra_rss >> 20} MiB")
        return on_line

    previous = sys.gettrace()
    chunks, total = [], 0
    sys.settrace(on_line)
    try:
        for chunk in template.generate(**variables):
            total += len(chunk)
            if total > MAX_OUTPUT_CHARS:
                raise TemplateLimitError(f"the chat template rendered over {MAX_OUTPUT_CHARS:,} "
                                         "characters")
            chunks.append(chunk)
    except MemoryError:
        raise TemplateLimitError("the chat template ran out of memory") from None
    finally:
        sys.settrace(previous)
        if rss:
            rss.close()
    return "".join(chunks)
