"""runtime.chat_template: transformers-exact rendering (against the fixtures), the sandbox
limits on hostile templates, the fallback templates and template files."""
import datetime
import json
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from runtime import chat_template as ct
from runtime.chat_template import TemplateError

TEMPLATES = Path(__file__).resolve().parents[1] / "fixtures" / "templates"
# The fixtures were rendered on this day (tests/fixtures/README.md, templates/).
FIXTURE_DAY = datetime.datetime(2026, 11, 23, 12, 0, 0)
CASE_KEYS = {"conversation", "messages", "add_generation_prompt", "bos_token", "eos_token",
             "expected", "error"}


def _fixture_cases():
    cases = []
    for path in sorted(TEMPLATES.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        source = (TEMPLATES / data["template"]).read_text(encoding="utf-8")
        for case in data["cases"]:
            cases.append(pytest.param(source, case, id=f"{path.stem}-{case['conversation']}"))
    return cases


FIXTURE_CASES = _fixture_cases()


def _render_case(source, case, **kw):
    # Any key beyond the standard ones (tools, enable_thinking, ...) goes to the template.
    extra = {k: v for k, v in case.items() if k not in CASE_KEYS}
    return ct.render(source, case["messages"],
                     add_generation_prompt=case["add_generation_prompt"],
                     bos_token=case["bos_token"], eos_token=case["eos_token"],
                     clock=lambda: FIXTURE_DAY, **extra, **kw)


def _fixture(name):
    data = json.loads((TEMPLATES / f"{name}.json").read_text(encoding="utf-8"))
    source = (TEMPLATES / data["template"]).read_text(encoding="utf-8")
    return source, {c["conversation"]: c for c in data["cases"]}


def test_fixture_set_is_present():
    assert len(FIXTURE_CASES) >= 40


@pytest.mark.parametrize("source,case", FIXTURE_CASES)
def test_matches_transformers(source, case):
    if "error" in case:
        with pytest.raises(TemplateError) as info:
            _render_case(source, case)
        # The template's own message must come through, word for word.
        msg = info.value.template_message
        assert msg and msg in str(info.value)
        assert f"raise_exception('{msg}')" in source or f'raise_exception("{msg}")' in source
    else:
        assert _render_case(source, case) == case["expected"]


def test_strftime_now_reads_the_injected_clock(monkeypatch):
    src = "{{ strftime_now('%d %b %Y') }}"
    assert ct.render(src, [], clock=lambda: FIXTURE_DAY) == FIXTURE_DAY.strftime("%d %b %Y")
    monkeypatch.setattr(ct, "now", lambda: datetime.datetime(2001, 2, 3))
    assert ct.render(src, []) == "03 Feb 2001"


def test_clock_is_per_render_across_threads():
    src = "{% for i in range(3000) %}{% endfor %}{{ strftime_now('%Y') }}"
    results = {}

    def run(year):
        results[year] = ct.render(src, [], clock=lambda: datetime.datetime(year, 1, 1))

    threads = [threading.Thread(target=run, args=(y,)) for y in (1999, 2042)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {1999: "1999", 2042: "2042"}


def test_tojson_matches_json_dumps_and_keeps_non_ascii():
    value = {"b": "héllo — 世界 <&>", "a": [1, 2.5, None, True]}
    out = ct.render("{{ v|tojson }}|{{ v|tojson(indent=2, sort_keys=true) }}|"
                    "{{ v|tojson(separators=(',', ':')) }}", [], v=value)
    plain, pretty, compact = out.split("|")
    assert plain == json.dumps(value, ensure_ascii=False)
    assert pretty == json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True)
    assert compact == json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def test_tools_are_passed_and_rendered():
    source, cases = _fixture("Qwen-Qwen2.5-7B-Instruct")
    tool = {"type": "function", "function": {"name": "météo", "parameters": {}}}
    case = cases["system+user"]
    out = ct.render(source, case["messages"], tools=[tool])
    without = ct.render(source, case["messages"])
    assert without == case["expected"]
    assert out != without
    line = next(ln for ln in out.splitlines() if "météo" in ln)
    assert json.loads(line) == tool


def test_extra_kwargs_reach_the_template():
    source, cases = _fixture("Qwen-Qwen3-0.6B")
    case = cases["system+user"]
    thinking_off = ct.render(source, case["messages"], enable_thinking=False)
    assert thinking_off.startswith(case["expected"])
    assert thinking_off != case["expected"]  # Qwen3 adds an empty think block
    assert "<think>" in thinking_off[len(case["expected"]):]


def test_generation_tag_renders_its_body():
    src = "{% generation %}A{{ 1 + 1 }}{% endgeneration %}B"
    assert ct.render(src, []) == "A2B"


def test_raise_exception_gives_template_error_with_message():
    with pytest.raises(TemplateError, match="roles must alternate") as info:
        ct.render("{{ raise_exception('roles must alternate') }}", [])
    assert info.value.template_message == "roles must alternate"


@pytest.mark.parametrize("src,expect", [
    ("{% for %}", "line 1"),
    ("ok\n\n{% if x %}", "line 3"),
    ("{{ foo.bar }}", "undefined"),
    ("{{ 1 / 0 }}", "ZeroDivisionError"),
    ("{{ 1 + 'a' }}", "TypeError"),
    ("{% include 'other.jinja' %}", "loader"),
    ("{{ messages[5].role }}", "no element 5"),
    ("{{ 'a' < 1 }}", "TypeError"),
    ("{{ {'a': cycler}|tojson }}", "TypeError"),
])
def test_malformed_templates_give_template_error(src, expect):
    with pytest.raises(TemplateError) as info:
        ct.render(src, [{"role": "user", "content": "hi"}])
    assert expect in str(info.value)


@pytest.mark.parametrize("template,messages", [
    (None, []), (b"{{ 1 }}", []), ("x", "not a list"), ("x", [1, 2]), ("x" * 300_000, []),
])
def test_bad_arguments_give_template_error(template, messages):
    with pytest.raises(TemplateError):
        ct.render(template, messages)


def test_compiled_once_per_template():
    src = "{{ messages|length }} unique-to-cache-test"
    first = ct.compile_template(src)
    before = ct._compile_cached.cache_info().hits
    assert ct.compile_template(src) is first
    assert ct._compile_cached.cache_info().hits == before + 1


@pytest.mark.parametrize("name", sorted(p.stem for p in TEMPLATES.glob("*.jinja")))
def test_long_conversation_through_every_fixture_template(name):
    # 100 turns of 2 KB: the limits must leave real conversations alone.
    source = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"<{i}>" + "w " * 1000}
             for i in range(99)]
    out = ct.render(source, turns, bos_token="<s>", eos_token="</s>",
                    clock=lambda: FIXTURE_DAY)
    for turn in turns:
        assert turn["content"].strip() in out


def test_large_legitimate_input_is_not_refused():
    big = "word " * 600_000  # 3 MB: past the default cap, which scales with the input
    out = ct.render(ct.CHATML_TEMPLATE, [{"role": "user", "content": big}])
    assert big in out


# ---------------------------------------------------------------------- hostile templates

MB = 1 << 20
HOSTILE = {
    # attribute walks out of the sandbox
    "mro_walk": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "globals_via_cycler": "{{ cycler.__init__.__globals__.os.system('id') }}",
    "globals_via_global": "{{ raise_exception.__globals__ }}",
    "globals_via_attr_filter": "{{ (raise_exception|attr('__globals__'))['os'] }}",
    "class_via_getitem": "{{ ''['__class__'] }}",
    "namespace_init": "{{ namespace.__init__.__globals__['os'] }}",
    "template_context": "{{ self._TemplateReference__context }}",
    "format_field_walk": "{{ '{0.__class__.__mro__}'.format('') }}",
    "map_attribute_walk": "{{ ['']|map(attribute='__class__')|list }}",
    "mutate_messages": "{{ messages.append(1) }}",
    # loops
    "range_1e9": "{% for i in range(10**9) %}{{ i }}{% endfor %}",
    "nested_loops_silent": "{% set r = range(100000) %}"
                           "{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}",
    "nested_loops_output": "{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}"
                           "{% endfor %}{% endfor %}",
    "static_text_in_set_block": "{% set r = range(100000) %}{% set s %}{% for i in r %}"
                                "{% for j in r %}" + "y" * 1000 + "{% endfor %}{% endfor %}"
                                "{% endset %}",
    "expensive_loop_body": "{% for i in range(100000) %}{{ range(100000)|sort|first }}"
                           "{% endfor %}",
    # recursion
    "recursive_macro": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "recursive_loop": "{% for x in [[1]] recursive %}{{ loop([x]) }}{% endfor %}",
    "mutual_recursion": "{% macro a(n) %}{{ b(n) }}{% endmacro %}"
                        "{% macro b(n) %}{{ a(n) }}{% endmacro %}{{ a(0) }}",
    "deep_parentheses": "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
    "deep_for_nesting": "{% for a in [1] %}" * 50 + "x" + "{% endfor %}" * 50,
    "deep_if_nesting": "{% if 1 %}" * 1000 + "x" + "{% endif %}" * 1000,
    # compiling: jinja and Python's compiler are slow on big machine-made templates
    "compile_bomb_outputs": "{{ a }}" * 18000,
    "compile_bomb_loops": ("{% for a in [1] %}" * 19 + "x" + "{% endfor %}" * 19) * 200,
    "oversized_template": "x" * (1 << 20),
    # string and number bombs
    "str_times_1e10": "{{ 'x' * 10**10 }}",
    "str_times_literal": "{{ 'x' * 10000000000 }}",
    "list_times": "{{ (['x' * 100000] * 100000)|length }}",
    "power": "{{ 2 ** 100000000 }}",
    "int_squaring": "{% set ns = namespace(n=3) %}{% for i in range(100) %}"
                    "{% set ns.n = ns.n * ns.n %}{% endfor %}",
    "concat_doubling": "{% set ns = namespace(s='ab') %}{% for i in range(64) %}"
                       "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    "plus_doubling": "{% set ns = namespace(s='ab') %}{% for i in range(64) %}"
                     "{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "static_doubling": "{% set a = 'abcd' %}" + "{% set a = a ~ a %}" * 60 + "{{ a|length }}",
    "macro_doubling": "{% macro f(s, n) %}{% if n %}{{ f(s ~ s, n - 1) }}{% endif %}"
                      "{% endmacro %}{{ f('ab', 60) }}",
    "list_doubling": "{% set ns = namespace(a=[1]) %}{% for i in range(60) %}"
                     "{% set ns.a = ns.a + ns.a %}{% endfor %}",
    "center_filter": "{{ 'x'|center(1000000000) }}",
    "center_method": "{{ 'x'.center(10000000000) }}",
    "ljust_method": "{{ 'x'.ljust(10**10) }}",
    "percent_width": "{{ '%0999999999d' % 1 }}",
    "format_filter_width": "{{ '%0999999999d'|format(1) }}",
    "brace_width": "{{ '{:>9999999999}'.format(1) }}",
    "brace_nested_width": "{{ '{:>{}}'.format(1, 10**10) }}",
    "replace_squaring": "{% set ns = namespace(s='abcdefgh') %}{% for i in range(30) %}"
                        "{% set ns.s = ns.s.replace('', ns.s) %}{% endfor %}",
    "replace_filter_squaring": "{% set ns = namespace(s='abcdefgh') %}{% for i in range(30) %}"
                               "{% set ns.s = ns.s|replace('', ns.s) %}{% endfor %}",
    "indent_width": "{{ ('x\n' * 100000)|indent(100000) }}",
    "expandtabs": "{{ ('\t' * 1000).expandtabs(100000000) }}",
    "int_to_bytes": "{{ (1).to_bytes(10000000000, 'big') }}",
    "tojson_indent": "{{ [[1]]|tojson(indent=1000000000) }}",
    "wordwrap_wrapstring": "{{ ('ab ' * 300000)|wordwrap(1, wrapstring='z' * 10000) }}",
    # floods
    "str_join_flood": "{{ ''.join(['x' * 900000] * 1000) }}",
    "str_join_literal_list": "{% set s = 'x' * 900000 %}{{ ''.join([s, s, s, s, s, s]) }}",
    "join_filter_flood": "{% set s = 'x' * 500000 %}{{ [s, s, s, s, s, s, s, s]|join }}",
    "join_filter_separator": "{{ range(100000)|join('y' * 100000) }}",
    "set_block_flood": "{% set big = 'x' * 900000 %}{% set s %}{% for i in range(100000) %}"
                       "{{ big }}{% endfor %}{% endset %}{{ s|length }}",
    "macro_output_flood": "{% set big = 'x' * 900000 %}{% macro m() %}"
                          "{% for i in range(100000) %}{{ big }}{% endfor %}{% endmacro %}"
                          "{{ m()|length }}",
    "list_repr_flood": "{% set s = 'x' * 900000 %}{{ [s, s, s, s, s, s, s, s] ~ '' }}",
    "map_center_list": "{{ (range(100000)|map('string')|map('center', 900000)|list)|length }}",
    "str_join_generator": "{{ ''.join(range(100000)|map('string')|map('center', 900000)) }}",
    "star_args_flood": "{% set c = cycler(*(range(100000)|map('string')|map('center', 900000)))"
                       " %}{{ c.next() }}",
    "default_refs_flood": "{% set s = 'x' * 900000 %}"
                          "{{ range(100000)|map('attr', 'nope')|map('default', s)|list|length }}",
    "lipsum": "{{ lipsum(100000, false, 10000, 10000) }}",
    "slice_count": "{{ [1]|slice(1000000000)|list|length }}",
    "batch_padding": "{{ [1]|batch(1000000000, 'x')|list|length }}",
    # cycler / joiner / namespace abuse
    "cycler_spin": "{% set c = cycler(*range(100000)) %}{% for i in range(100000) %}"
                   "{% for j in range(100000) %}{{ c.next() }}{% endfor %}{% endfor %}",
    "cycler_internals": "{{ cycler(1).__dict__ }}",
    "joiner_flood": "{% set j = joiner('x' * 100000) %}{% for i in range(100000) %}"
                    "{% for k in range(100) %}{{ j() }}{% endfor %}{% endfor %}",
    "namespace_self_reference": "{% set ns = namespace(a='x' * 500000) %}{% set ns.me = ns %}"
                                "{% set ns.b = [ns, ns, ns] %}{{ ns ~ ns ~ ns }}",
    "namespace_internals": "{{ namespace(a=1)._Namespace__attrs }}",
}


@pytest.fixture(scope="module")
def hostile_timings():
    timings = {}
    yield timings
    if timings:  # visible with -s; the slowest are the ones stopped by the deadline
        print("\nhostile template timings (s):")
        for name, seconds in sorted(timings.items(), key=lambda kv: -kv[1]):
            print(f"  {name:28s} {seconds:6.3f}")


# Stopped by the deadline after CPU-heavy steps that tracemalloc slows several-fold; their
# memory is bounded by what fits in the time limit, so they are timed without tracing.
CPU_BOUND = {"expensive_loop_body", "compile_bomb_outputs", "compile_bomb_loops"}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_template_is_stopped(name, hostile_timings):
    traced = name not in CPU_BOUND
    if traced:
        tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(TemplateError):
            ct.render(HOSTILE[name], [{"role": "user", "content": "hi"}])
        elapsed_s = time.perf_counter() - start
        peak_bytes = tracemalloc.get_traced_memory()[1] if traced else 0
    finally:
        if traced:
            tracemalloc.stop()
    hostile_timings[name] = elapsed_s
    assert elapsed_s < 5.0
    assert peak_bytes < 256 * MB


def test_escape_attempts_name_the_unsafe_access():
    with pytest.raises(TemplateError, match="template tried to access .*__globals__"):
        ct.render(HOSTILE["globals_via_global"], [])


def test_time_limit_is_configurable():
    start = time.perf_counter()
    with pytest.raises(TemplateError, match="longer than 0.2 s"):
        ct.render(HOSTILE["nested_loops_silent"], [], limits=ct.Limits(time_s=0.2))
    assert time.perf_counter() - start < 1.5


def test_compile_budget_counts_work_not_time():
    source, _ = _fixture("Qwen-Qwen3-0.6B")
    source += "{# budget test #}"  # a string not compiled (and cached) by other tests
    with pytest.raises(TemplateError, match="too costly to compile"):
        ct.compile_template(source, ct.Limits(max_compile_events=20_000))
    assert ct.compile_template(source) is not None


def test_output_limit_is_configurable():
    src = "{% for i in range(1000) %}{{ 'x' * 100 }}{% endfor %}"
    assert len(ct.render(src, [])) == 100_000
    with pytest.raises(TemplateError, match="exceeds"):
        ct.render(src, [], limits=ct.Limits(max_output_chars=50_000))


def test_legitimate_recursion_within_depth_limit():
    src = ("{% macro count(n) %}{% if n > 0 %}{{ n }},{{ count(n - 1) }}{% endif %}"
           "{% endmacro %}{{ count(20) }}")
    assert ct.render(src, []) == ",".join(str(n) for n in range(20, 0, -1)) + ","


# ---------------------------------------------------------------------- fallbacks

THREE_TURNS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another?"},
]


@pytest.mark.parametrize("arch,vocab,expected", [
    ("gemma3", set(), ct.GEMMA_TEMPLATE),
    ("Gemma2", ["<pad>"], ct.GEMMA_TEMPLATE),
    ("llama", {"<start_of_turn>", "<end_of_turn>"}, ct.GEMMA_TEMPLATE),
    ("llama", {"<|start_header_id|>", "<|eot_id|>"}, ct.LLAMA3_TEMPLATE),
    ("qwen2", {"<|im_start|>", "<|im_end|>"}, ct.CHATML_TEMPLATE),
    ("phi3", frozenset(), ct.CHATML_TEMPLATE),
])
def test_fallback_choice(arch, vocab, expected):
    assert ct.fallback_template(arch, vocab) == expected


def test_gemma_fallback_matches_gemma_template():
    source, cases = _fixture("google-gemma-2-2b-it")
    turns = cases["multi-turn"]
    fallback = ct.fallback_template("gemma2", set())
    assert ct.render(fallback, turns["messages"], bos_token="<s>") == turns["expected"]
    # Gemma has no system role: the system text opens the first user turn.
    sys_msg, first, *rest = THREE_TURNS
    folded = [{"role": "user", "content": sys_msg["content"] + "\n\n" + first["content"]}, *rest]
    want = ct.render(source, folded, bos_token="<s>")
    assert ct.render(fallback, THREE_TURNS, bos_token="<s>") == want


def test_gemma_fallback_structure():
    out = ct.render(ct.GEMMA_TEMPLATE, THREE_TURNS, bos_token="<bos>")
    assert out.startswith("<bos><start_of_turn>user\nBe brief.\n\nHi!<end_of_turn>\n")
    assert out.count("<start_of_turn>user\n") == 3
    assert out.count("<start_of_turn>model\n") == 3  # 2 answers + the generation prompt
    assert out.count("Be brief.") == 1 and "system" not in out
    assert out.endswith("Another?<end_of_turn>\n<start_of_turn>model\n")
    no_prompt = ct.render(ct.GEMMA_TEMPLATE, THREE_TURNS, add_generation_prompt=False)
    assert no_prompt.endswith("Another?<end_of_turn>\n")
    only_system = ct.render(ct.GEMMA_TEMPLATE, THREE_TURNS[:1])
    assert only_system == "<start_of_turn>user\nBe brief.<end_of_turn>\n<start_of_turn>model\n"


def test_llama3_fallback_matches_llama_turns():
    _, cases = _fixture("meta-llama-Llama-3.1-8B-Instruct")
    turns = cases["multi-turn"]
    # Llama 3.1 prepends a dated system block; the turns after it are the Llama-3 format.
    tail = turns["expected"][turns["expected"].index("<|start_header_id|>user"):]
    fallback = ct.fallback_template("llama", {"<|start_header_id|>"})
    assert ct.render(fallback, turns["messages"], bos_token="<s>") == "<s>" + tail
    out = ct.render(fallback, THREE_TURNS, bos_token="<s>")
    assert out.startswith("<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>")
    assert out.count("<|start_header_id|>user<|end_header_id|>\n\n") == 3
    assert out.count("<|eot_id|>") == 6
    assert out.endswith("Another?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_chatml_fallback_matches_qwen():
    _, cases = _fixture("Qwen-Qwen2.5-7B-Instruct")
    case = cases["system+user"]
    fallback = ct.fallback_template("qwen2", set())
    assert ct.render(fallback, case["messages"], bos_token="<s>") == case["expected"]
    out = ct.render(fallback, THREE_TURNS)
    assert out.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!")
    assert out.count("<|im_start|>") == 7 and out.count("<|im_end|>\n") == 6
    assert out.endswith("<|im_start|>user\nAnother?<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("template", [ct.GEMMA_TEMPLATE, ct.LLAMA3_TEMPLATE, ct.CHATML_TEMPLATE])
def test_fallbacks_take_content_parts(template):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello "},
                                          {"type": "image_url", "image_url": {"url": "x"}},
                                          {"type": "text", "text": "there"}]}]
    plain = [{"role": "user", "content": "Hello there"}]
    assert ct.render(template, parts) == ct.render(template, plain)


# ---------------------------------------------------------------------- tools a template cannot show

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
ROUND_TRIP = ASK + [
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": {}}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    {"role": "tool", "tool_call_id": "c2", "content": "noon"}]


def _listed_tools(text):
    """The JSON array of tools in a rendered generic tool description."""
    start = text.index("[\n{")
    return json.loads(text[start:text.index("\n]", start) + 2])


@pytest.mark.parametrize("name, tools", [
    ("Qwen-Qwen2.5-7B-Instruct", True), ("Qwen-Qwen3-0.6B", True),
    ("meta-llama-Llama-3.1-8B-Instruct", True), ("mistralai-Mistral-Nemo-Instruct-2407", True),
    ("ibm-granite-granite-3.3-2B-Instruct", True), ("qwen2.5-coder-0.5b-instruct", True),
    ("google-gemma-2-2b-it", False), ("microsoft-Phi-3.5-mini-instruct", False),
    ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", False), ("HuggingFaceTB-SmolLM3-3B", False),
])
def test_tool_support_tells_templates_that_show_tools(name, tools):
    source, _ = _fixture(name)
    assert ct.tool_support(source).tools is tools


def test_tool_support_of_the_probed_parts():
    sup = ct.tool_support(_fixture("google-gemma-2-2b-it")[0])
    assert sup == ct.ToolSupport(tools=False, tool_calls=False, tool_results=False,
                                 system_role=False)  # it raises on a system message
    # DeepSeek-R1's renders past calls and results in its own tokens, but never the tools.
    sup = ct.tool_support(_fixture("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B")[0])
    assert (sup.tools, sup.tool_calls, sup.tool_results) == (False, True, True)
    for builtin in (ct.GEMMA_TEMPLATE, ct.LLAMA3_TEMPLATE, ct.CHATML_TEMPLATE):
        sup = ct.tool_support(builtin)
        assert not (sup.tools or sup.tool_calls or sup.tool_results) and sup.system_role


@pytest.mark.parametrize("name", ["Qwen-Qwen2.5-7B-Instruct", "meta-llama-Llama-3.1-8B-Instruct",
                                  "mistralai-Mistral-Nemo-Instruct-2407",
                                  "ibm-granite-granite-3.3-2B-Instruct"])
def test_templates_that_show_tools_render_as_transformers_does(name):
    source, _ = _fixture(name)
    messages = ROUND_TRIP
    if name.startswith("mistralai"):  # it wants 9-character alphanumeric call ids
        messages = json.loads(json.dumps(ROUND_TRIP).replace('"c1"', '"abcdefgh1"')
                              .replace('"c2"', '"abcdefgh2"'))
    if name.startswith("meta-llama"):  # one call per message
        messages = [*messages[:1], {**messages[1], "tool_calls": messages[1]["tool_calls"][:1]},
                    messages[2]]
    for msgs, tools in ((ASK, [WEATHER, CLOCK]), (messages, [WEATHER, CLOCK]), (messages, None)):
        kw = dict(tools=tools, clock=lambda: FIXTURE_DAY)
        assert ct.render(source, msgs, **kw) == ct.render(source, msgs, generic_tools=False, **kw)


@pytest.mark.parametrize("template", [ct.GEMMA_TEMPLATE, ct.LLAMA3_TEMPLATE, ct.CHATML_TEMPLATE,
                                      "phi"])
def test_a_template_without_tools_gets_them_in_the_system_text(template):
    if template == "phi":
        template = _fixture("microsoft-Phi-3.5-mini-instruct")[0]
    out = ct.render(template, ASK, tools=[WEATHER, CLOCK])
    assert out != ct.render(template, ASK)
    assert _listed_tools(out) == [WEATHER, CLOCK]      # names and schemas, as JSON
    assert ct.generic_tool_prompt([WEATHER, CLOCK]) in out
    assert '{"tool_call": {"name": ' in out and '{"response": ' in out
    # The description comes first, in the system turn (Gemma: opening the first user turn).
    assert out.index("get_weather") < out.index("Weather in Paris?")


def test_the_tool_text_joins_the_system_message():
    messages = [{"role": "system", "content": "Be brief."}, *ASK]
    out = ct.render(ct.CHATML_TEMPLATE, messages, tools=[WEATHER])
    want = [{"role": "system", "content": "Be brief.\n\n" + ct.generic_tool_prompt([WEATHER])},
            *ASK]
    assert out == ct.render(ct.CHATML_TEMPLATE, want)
    assert out.count("<|im_start|>system") == 1
    # Gemma has no system role: system text and tools open the first user turn.
    out = ct.render(ct.GEMMA_TEMPLATE, messages, tools=[WEATHER])
    assert out.startswith("<start_of_turn>user\nBe brief.\n\nYou can call any of these tools")
    assert out.endswith("\n\nWeather in Paris?<end_of_turn>\n<start_of_turn>model\n")
    assert out.count("<start_of_turn>") == 2


def test_a_template_that_refuses_a_system_message_gets_the_tools_in_the_user_turn():
    source, _ = _fixture("google-gemma-2-2b-it")
    with pytest.raises(TemplateError, match="System role not supported"):
        ct.render(source, [{"role": "system", "content": "x"}, *ASK])
    out = ct.render(source, ASK, tools=[WEATHER])
    assert out.startswith("<start_of_turn>user\nYou can call any of these tools")
    assert _listed_tools(out) == [WEATHER]
    assert out.endswith("\n\nWeather in Paris?<end_of_turn>\n<start_of_turn>model\n")


def test_fold_system_opens_the_user_turn_where_the_template_has_no_system_role():
    source, _ = _fixture("google-gemma-2-2b-it")  # refuses a system message
    sys_msg, first, *rest = THREE_TURNS
    folded = [{"role": "user", "content": sys_msg["content"] + "\n\n" + first["content"]}, *rest]
    assert ct.render(source, THREE_TURNS, fold_system=True) == ct.render(source, folded)
    # One that drops system text silently gets it too; a system message with no user
    # turn after it becomes one.
    drops = ("{% for m in messages %}{% if m.role != 'system' %}[{{ m.role }}] {{ m.content }}\n"
             "{% endif %}{% endfor %}")
    assert ct.render(drops, [sys_msg, first], fold_system=True) == f"[user] {sys_msg['content']}\n\n{first['content']}\n"
    assert ct.render(drops, [first, sys_msg], fold_system=True) == f"[user] {first['content']}\n[user] {sys_msg['content']}\n"
    # ... where the system message stood: before an assistant prefill, not after it.
    prefill = {"role": "assistant", "content": "Sure"}
    assert ct.render(drops, [sys_msg, prefill], fold_system=True) == \
        f"[user] {sys_msg['content']}\n[assistant] Sure\n"
    # A template with a system role renders it as its own turn, folded or not.
    for name in ("Qwen-Qwen2.5-7B-Instruct", "meta-llama-Llama-3.1-8B-Instruct"):
        source, _ = _fixture(name)
        assert ct.render(source, THREE_TURNS, fold_system=True, clock=lambda: FIXTURE_DAY) == \
            ct.render(source, THREE_TURNS, clock=lambda: FIXTURE_DAY)


def test_a_template_that_refuses_tools_gets_the_generic_text():
    src = ("{% if tools %}{{ raise_exception('tools are not supported') }}{% endif %}"
           "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}")
    out = ct.render(src, ASK, tools=[WEATHER])
    assert out.startswith("[system] You can call any of these tools")
    assert _listed_tools(out) == [WEATHER]
    # Reading `tools` to show them is handling them: the template's own rendering stays.
    shows = "{{ tools | tojson }}|{% for m in messages %}{{ m.content }}{% endfor %}"
    assert ct.render(shows, ASK, tools=[WEATHER]) == json.dumps([WEATHER]) + "|Weather in Paris?"
    # Failing with tools for another reason (here a limit) tells nothing: left as it is.
    slow = ("{% if tools %}{% for i in range(100000) %}{% for j in range(100000) %}"
            "{% endfor %}{% endfor %}{% endif %}{{ messages[0].content }}")
    assert ct.tool_support(slow).tools is True


def test_past_calls_and_results_render_in_gemma_roles():
    out = ct.render(ct.GEMMA_TEMPLATE, ROUND_TRIP, tools=[WEATHER, CLOCK])
    assert "<start_of_turn>tool" not in out
    calls = {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}},
                            {"name": "get_time", "arguments": {}}]}
    results = [{"tool_response": {"tool": "get_weather", "content": "sunny", "tool_call_id": "c1"}},
               {"tool_response": {"tool": "get_time", "content": "noon", "tool_call_id": "c2"}}]
    turns = out.split("<start_of_turn>")[2:]
    assert turns[0] == "model\n" + json.dumps(calls, ensure_ascii=False) + "<end_of_turn>\n"
    # Results in a row are one user turn (Gemma's own templates insist on alternation).
    assert turns[1] == ("user\n" + "\n\n".join(json.dumps(r) for r in results)
                        + "<end_of_turn>\n")
    assert turns[2] == "model\n"
    # One call is written as the model is asked to write it; text beside it is kept.
    one = [*ASK, {"role": "assistant", "content": "Checking.", "tool_calls": [{
        "id": "c1", "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}]
    out = ct.render(ct.GEMMA_TEMPLATE, one, add_generation_prompt=False)
    assert out.endswith('<start_of_turn>model\n{"tool_call": {"name": "get_weather", '
                        '"arguments": {"city": "Paris"}}, "content": "Checking."}<end_of_turn>\n')


def test_the_user_speaking_after_a_tool_result_shares_its_turn():
    """Gemma 2's own template refuses two user turns in a row: a result (written as a user
    turn) followed by the user's next question used to be a 400."""
    source, _ = _fixture("google-gemma-2-2b-it")
    messages = [*ROUND_TRIP, {"role": "user", "content": "And in Rome?"}]
    out = ct.render(source, messages, tools=[WEATHER, CLOCK])
    turn = out.split("<start_of_turn>")[-2]
    assert turn.startswith('user\n{"tool_response": ') and turn.endswith(
        "\n\nAnd in Rome?<end_of_turn>\n"), turn
    assert out.endswith("<start_of_turn>model\n")


def test_a_template_that_renders_tool_results_keeps_them():
    source, _ = _fixture("HuggingFaceTB-SmolLM3-3B")   # has a "tool" role, shows no tools
    out = ct.render(source, ROUND_TRIP, tools=[WEATHER])
    raw = ct.render(source, ROUND_TRIP, generic_tools=False)
    assert _listed_tools(out) == [WEATHER]
    assert out.count("sunny") == raw.count("sunny") == 1
    assert '{"tool_response"' not in out and '"tool_calls": [{"name": "get_weather"' in out


def test_without_tool_parts_nothing_changes_and_nothing_is_probed(monkeypatch):
    def boom(template):
        raise AssertionError("probed")
    monkeypatch.setattr(ct, "tool_support", boom)
    for tools in (None, []):
        assert ct.render(ct.GEMMA_TEMPLATE, THREE_TURNS, tools=tools) == \
            ct.render(ct.GEMMA_TEMPLATE, THREE_TURNS, generic_tools=False)


# ---------------------------------------------------------------------- template files

def test_load_template_file(tmp_path):
    path = tmp_path / "t.jinja"
    path.write_bytes("\ufeff{{ 'é' }}{{ messages|length }}\n".encode("utf-8"))
    source = ct.load_template_file(path)
    assert source == "{{ 'é' }}{{ messages|length }}\n"
    assert ct.render(source, [{"role": "user", "content": "x"}]) == "é1"


def test_load_template_file_errors(tmp_path):
    with pytest.raises(TemplateError, match="not found"):
        ct.load_template_file(tmp_path / "missing.jinja")
    with pytest.raises(TemplateError, match="directory"):
        ct.load_template_file(tmp_path)
    latin1 = tmp_path / "latin1.jinja"
    latin1.write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(TemplateError, match="not UTF-8"):
        ct.load_template_file(latin1)
    big = tmp_path / "big.jinja"
    with open(big, "wb") as f:
        f.truncate(ct.MAX_TEMPLATE_FILE_BYTES + 1)
    with pytest.raises(TemplateError, match="byte limit"):
        ct.load_template_file(big)
    broken = tmp_path / "broken.jinja"
    broken.write_text("line one\n{% for x in %}\n", encoding="utf-8")
    with pytest.raises(TemplateError, match="line 2"):
        ct.load_template_file(broken)
