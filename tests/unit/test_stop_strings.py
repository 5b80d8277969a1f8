"""Stop strings are found at the same token whether the whole reply or only its tail is decoded."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finetune_sdk.serve.decode import reached_stop

PIECES = ["a", " b", "\n", "User:", " User", ":", "é", "。", "🙂", "ß", "##", " the", "END", "  "]
STOPS = ["\nUser:", "END", "。", "🙂🙂", "é\n", "##"]


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=40), st.lists(st.sampled_from(STOPS), min_size=1,
                                                                             max_size=2))
def test_the_tail_window_finds_each_stop_string_at_the_token_that_completes_it(smol_tokenizer, pieces, stop):
    tokens = smol_tokenizer.encode("".join(pieces), add_special_tokens=False)

    def whole(k: int) -> bool:
        return any(s in smol_tokenizer.decode(tokens[:k], skip_special_tokens=True) for s in stop)

    first = next((k for k in range(1, len(tokens) + 1) if whole(k)), None)
    found = next((k for k in range(1, len(tokens) + 1) if reached_stop(smol_tokenizer, tokens[:k], stop)), None)
    assert found == first
