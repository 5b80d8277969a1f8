"""The bundled counsel-sample: schema, topic balance, and no near-duplicate questions; the independent
questions in benchmarks/data share no close wording with it."""

import itertools
import json
import re
from collections import Counter
from pathlib import Path

TOPICS = {"depression", "anxiety", "stress", "relationships", "family-conflict", "grief-and-loss",
          "sleep-improvement", "self-esteem", "substance-abuse", "trauma", "anger-management", "parenting"}
INDEPENDENT = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "counsel_independent.jsonl"


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


def test_the_independent_questions_share_no_close_wording_with_the_bundled_ones(counsel_rows):
    independent = [json.loads(line) for line in INDEPENDENT.read_text(encoding="utf-8").splitlines()]
    assert Counter(r["topic"] for r in independent) == {topic: 20 for topic in TOPICS}

    def overlap(a: set, b: set) -> float:
        return len(a & b) / len(a | b)

    bundled = [_shingles(r["questionText"]) for r in counsel_rows]
    own = [_shingles(r["questionText"]) for r in independent]
    assert max(overlap(a, b) for a in own for b in bundled) <= 0.15
    assert max(overlap(a, b) for a, b in itertools.combinations(own, 2)) <= 0.10
