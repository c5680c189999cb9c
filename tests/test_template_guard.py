"""A model's chat template is untrusted code (issue 14): rendering is bounded in time, memory
and size, and a hostile template fails within a few seconds with one clear error."""

import time

import pytest

pytest.importorskip("jinja2")

from geolocsft import protocol  # noqa: E402
from geolocsft.engine_mtmd import render_prompt  # noqa: E402
from geolocsft.template_guard import MAX_TEMPLATE_CHARS, TemplateLimitError  # noqa: E402

HOSTILE = {
    "endless loop": "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in "
                    "range(100000) %}{% endfor %}{% endfor %}{% endfor %}",
    "string bomb": "{{ 'x' * 100000000000 }}",
    "list bomb": "{{ ([1] * 99999999999) | length }}",
    "doubling": "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(64) %}"
                "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
    "power": "{{ 9 ** 999999999 }}",
    "width": "{{ '%999999999999s' % 'a' }}",
    "format width": "{{ '{:>999999999}'.format('a') }}",
    "filter size": "{{ 'a' | center(9999999999) }}",
    "output flood": "{% for a in range(100000) %}{% for b in range(100) %}xxxxxxxxxx"
                    "{% endfor %}{% endfor %}",
    "huge text": "x" * (MAX_TEMPLATE_CHARS + 1),
}


def render(template: str) -> str:
    messages = protocol.chat_messages(protocol.get_prompt(protocol.PROMPT_VERSION))
    return render_prompt(template, messages, "qwen2.5-vl", "<__media__>", "", "<|im_end|>")


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_templates_fail_fast_with_one_clear_error(name):
    began = time.monotonic()
    with pytest.raises(TemplateLimitError) as caught:
        render(HOSTILE[name])
    assert time.monotonic() - began < 6, name
    message = str(caught.value)
    assert message.startswith("the chat template") and "\n" not in message


def test_the_real_template_still_renders_and_the_limits_are_lifted_after(tiny_qwen_folder):
    import sys

    from geolocsft.gguf_header import Keys, read_gguf

    template = read_gguf(tiny_qwen_folder / "model-Q8_0.gguf").get(Keys.Tokenizer.CHAT_TEMPLATE)
    tracer_before = sys.gettrace()
    text = render(template)
    assert text.count("<__media__>") == 1
    assert text.rstrip().endswith("<|im_start|>assistant")
    assert sys.gettrace() is tracer_before  # the time/memory hook is gone
    with pytest.raises(TemplateLimitError):
        render(HOSTILE["endless loop"])
    assert sys.gettrace() is tracer_before
    assert render(template) == text
