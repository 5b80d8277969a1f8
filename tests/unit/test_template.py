import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finetune_sdk import PromptTemplate, TemplateError
from tests.conftest import COUNSEL


def test_chat_template_columns_and_conversation():
    assert COUNSEL.columns == ["questionText", "topic"]
    assert COUNSEL.prompt_columns == ["questionText"]
    row = {"questionText": "I can't stop worrying {about} money", "topic": "anxiety"}
    assert COUNSEL.conversation(row) == [
        {"role": "system", "content": "You are a mental health assistant."},
        {"role": "user", "content": "I can't stop worrying {about} money"},  # braces in values stay literal
        {"role": "assistant", "content": "Based on what you've described, this sounds like anxiety."},
    ]
    assert COUNSEL.conversation(row, with_completion=False)[-1]["role"] == "user"


def test_plain_and_messages_templates():
    plain = PromptTemplate.plain("Q: {q}\nA:", " {a}")
    assert plain.columns == ["q", "a"] and plain.prompt_text({"q": "hi"}) == "Q: hi\nA:"
    msgs = PromptTemplate.messages("conv")
    assert msgs.columns == ["conv"]
    row = {"conv": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    assert msgs.conversation(row, with_completion=False) == [{"role": "user", "content": "a"}]


def test_parts_tell_row_values_from_template_wording():
    """What truncation may cut (row values) and what it may not (the template's wording)."""
    plain = PromptTemplate.plain("Q: {q}\nA:", " {a}")
    assert plain.prompt_parts({"q": "hi {x}"}) == [("Q: ", False), ("hi {x}", True), ("\nA:", False)]
    chat = PromptTemplate.chat(system="Be brief.", user="{q}\nAnswer in one word.", assistant="{a}")
    assert chat.conversation_parts({"q": "why", "a": "ok"}, with_completion=False) == [
        ("system", [("Be brief.", False)]), ("user", [("why", True), ("\nAnswer in one word.", False)])]
    msgs = PromptTemplate.messages()
    assert msgs.conversation_parts({"messages": [{"role": "user", "content": "a"}]}) == [("user", [("a", True)])]


TITLED = PromptTemplate.chat(system="Name the topic.", user="{questionTitle}\n\n{questionText}",
                             assistant="This sounds like {topic}.", optional=["questionTitle"])


@pytest.mark.parametrize("title", [None, "", "   ", float("nan"), "absent"])
def test_an_optional_column_left_out_renders_as_nothing_with_its_separator(title):
    row = {"questionText": "I can't sleep.", "topic": "sleep"} | ({} if title == "absent" else {"questionTitle": title})
    assert TITLED.conversation(row)[1] == {"role": "user", "content": "I can't sleep."}
    assert TITLED.conversation_parts(row)[1] == ("user", [("I can't sleep.", True)])
    titled = {**row, "questionTitle": "Awake at 4am"}
    assert TITLED.conversation(titled)[1]["content"] == "Awake at 4am\n\nI can't sleep."
    plain = PromptTemplate.plain("{context}\nQ: {q}\nA:", " {a}", optional=["context"])
    assert plain.prompt_text({"q": "why", "context": None}) == "Q: why\nA:"


def test_optional_columns_are_not_required_and_a_string_fills_the_required_one():
    assert TITLED.columns == ["questionText", "topic"]
    assert TITLED.prompt_columns == ["questionTitle", "questionText"]
    assert TITLED.prompt_source("I can't sleep.") == {"questionText": "I can't sleep."}
    assert PromptTemplate.from_dict(TITLED.to_dict()) == TITLED and TITLED.to_dict()["optional"] == ["questionTitle"]
    assert "optional" not in COUNSEL.to_dict()  # manifests of templates without optional columns are unchanged
    with pytest.raises(TemplateError, match="row has no value for \\['questionText'\\]"):
        TITLED.conversation({"questionTitle": "t", "topic": "x"})


@pytest.mark.parametrize("optional, match", [
    (["topic"], "must name placeholders of the prompt that the completion does not use"),
    (["answer"], "must name placeholders of the prompt"),
    ("questionTitle", "must be a list of column names"),
])
def test_bad_optional_columns_fail_when_built(optional, match):
    with pytest.raises(TemplateError, match=match):
        PromptTemplate.chat(user="{questionTitle} {questionText}", assistant="{topic}", optional=optional)
    with pytest.raises(TemplateError, match="optional= is for chat and plain templates"):
        PromptTemplate(kind="messages", messages_column="m", optional=("m",))


@pytest.mark.parametrize("bad", ["{}", "{0}", "{a.b}", "{a[0]}", "{a!r}", "{a:>10}", "{a", "a}"])
def test_malformed_placeholders_fail_when_built(bad):
    with pytest.raises(TemplateError, match="placeholder|format string"):
        PromptTemplate.chat(user=bad, assistant="{x}")


def test_round_trip_and_unknown_fields():
    assert PromptTemplate.from_dict(COUNSEL.to_dict()) == COUNSEL
    with pytest.raises(TemplateError, match="unknown template fields"):
        PromptTemplate.from_dict({**COUNSEL.to_dict(), "sytem": "typo"})
    with pytest.raises(TemplateError, match="needs both"):
        PromptTemplate.chat(user="{q}", assistant="")
    with pytest.raises(TemplateError, match="the template has no 'kind'; give one of 'chat', 'plain'"):
        PromptTemplate.from_dict({"user": "{q}", "assistant": "{a}"})
    with pytest.raises(TemplateError, match="user= must be a format string such as '{question}', got int 5"):
        PromptTemplate.from_dict({"kind": "chat", "user": 5, "assistant": "{a}"})


@settings(max_examples=300, deadline=None)
@given(user=st.text(alphabet=st.sampled_from("ab_{}!:.[]0 "), max_size=12), value=st.text(max_size=30))
def test_property_any_format_string_builds_or_is_a_template_error(user, value):
    """Whatever the user writes: a template, or a TemplateError, never another exception; and a built
    template renders row values literally (braces and format specs inside values are never interpreted)."""
    try:
        template = PromptTemplate.chat(user=user, assistant="{answer}")
    except TemplateError:
        return
    rendered = template.conversation({column: value for column in template.columns})[0]["content"]
    assert rendered == "".join(literal + (value if field is not None else "")
                               for literal, field, _, _ in string.Formatter().parse(user))
