"""The bundled counsel-sample: schema, topic balance, and no near-duplicate questions."""

import itertools
import re
from collections import Counter

TOPICS = {"depression", "anxiety", "stress", "relationships", "family-conflict", "grief-and-loss",
          "sleep-improvement", "self-esteem", "substance-abuse", "trauma", "anger-management", "parenting"}


def test_schema_size_and_topics(counsel_rows):
    assert len(counsel_rows) >= 600
    assert all(set(r) == {"questionTitle", "questionText", "topic", "answerText"} for r in counsel_rows)
    assert all(all(str(v).strip() for v in r.values()) for r in counsel_rows)
    counts = Counter(r["topic"] for r in counsel_rows)
    assert set(counts) == TOPICS
    assert min(counts.values()) >= 40


def _shingles(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z']+", text.lower())
    return {tuple(words[i:i + 3]) for i in range(max(1, len(words) - 2))}


def test_no_near_duplicate_questions_or_titles(counsel_rows):
    shingles = [_shingles(r["questionText"]) for r in counsel_rows]
    close = [(i, j, round(len(a & b) / len(a | b), 2)) for (i, a), (j, b) in itertools.combinations(enumerate(shingles), 2)
             if len(a & b) / len(a | b) > 0.2]
    assert close == []
    titles = Counter(r["questionTitle"].strip().lower() for r in counsel_rows)
    assert max(titles.values()) == 1


def test_questions_rarely_name_their_topic(counsel_rows):
    stems = {"depression": "depress", "anxiety": "anxi", "stress": "stress", "trauma": "trauma",
             "grief-and-loss": "grie", "anger-management": "anger"}
    for topic, stem in stems.items():
        rows = [r for r in counsel_rows if r["topic"] == topic]
        naming = sum(stem in r["questionText"].lower() for r in rows)
        assert naming / len(rows) < 0.25, topic
