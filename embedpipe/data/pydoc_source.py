"""Python's own documentation (``pydoc_data.topics``, on every Python install) as a real retrieval source.

The language-reference topics are split into sections (a heading underlined with ``*``, ``=``, ``-`` ...), each
section's body into passages of a few paragraphs. Training records are

- heading -> the section's passages (``What does <heading> do`` style lookups), and
- inverse-cloze pairs: a sentence of a passage -> the passage without that sentence.

A deterministic share of the sections (by a hash of the heading and text, so the split survives re-runs and Python
upgrades that add topics) is held out: those sections give a BEIR retrieval task (their headings as queries, every
passage as the corpus) and nothing from them is trained on. A further share (``dev_fraction``, the next band of the
same hash, so the test split is the same with or without it) is the task's dev split: model selection scores on it,
and nothing from it is trained on either.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from embedpipe.data.config import SourceConfig
from embedpipe.data.schema import Loaded, Record

UNDERLINE = re.compile(r"^([*=\-~^#])\1{2,}$")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"(])")
ICT_INSTRUCTION = "Given a sentence from the Python documentation, retrieve the passage it comes from"
MAX_PASSAGE_CHARS = 700
MIN_PASSAGE_CHARS = 60


@dataclass
class Section:
    topic: str
    heading: str
    passages: list[str]

    @property
    def key(self) -> str:
        return hashlib.sha1(f"{self.heading}\n{self.passages[0]}".encode()).hexdigest()


@dataclass
class PydocData:
    training: Loaded
    eval_corpus: dict[str, str] = field(default_factory=dict)
    eval_queries: dict[str, str] = field(default_factory=dict)
    eval_qrels: dict[str, dict[str, int]] = field(default_factory=dict)
    dev_queries: dict[str, str] = field(default_factory=dict)
    dev_qrels: dict[str, dict[str, int]] = field(default_factory=dict)
    instruction: str | None = None


def _passages(body: str) -> list[str]:
    """Paragraphs merged into passages of at most ~MAX_PASSAGE_CHARS (a long paragraph stays whole)."""
    paragraphs = [p.strip("\n") for p in re.split(r"\n\s*\n", body) if p.strip()]
    out: list[str] = []
    current = ""
    for para in paragraphs:
        if current and len(current) + len(para) > MAX_PASSAGE_CHARS:
            out.append(current)
            current = ""
        current = f"{current}\n\n{para}" if current else para
    if current:
        out.append(current)
    return [p for p in out if len(p.strip()) >= MIN_PASSAGE_CHARS]


def parse_sections(topics: dict[str, str]) -> list[Section]:
    """Every underlined section of every topic, deduplicated (several topics repeat the same section)."""
    sections: list[Section] = []
    seen: set[str] = set()
    for topic, text in sorted(topics.items()):
        lines = text.split("\n")
        heads = [i - 1 for i in range(1, len(lines))
                 if UNDERLINE.match(lines[i]) and lines[i - 1].strip() and len(lines[i]) == len(lines[i - 1])]
        if not heads:
            heads_bodies = [(topic, text)]
        else:
            heads_bodies = []
            for n, h in enumerate(heads):
                end = heads[n + 1] if n + 1 < len(heads) else len(lines)
                heads_bodies.append((lines[h].strip(), "\n".join(lines[h + 2:end])))
        for heading, body in heads_bodies:
            passages = _passages(body)
            if not passages:
                continue
            norm = re.sub(r"\s+", " ", passages[0]).strip().lower()
            if norm in seen:
                continue
            seen.add(norm)
            sections.append(Section(topic=topic, heading=heading, passages=passages))
    return sections


def _heading_query(section: Section, ambiguous: set[str]) -> str:
    heading = section.heading.replace('"', "")
    if section.heading in ambiguous:
        return f"{heading} ({section.topic.replace('-', ' ')})"
    return heading


def _ict_sentence(passage: str, salt: str) -> tuple[str, str] | None:
    """(sentence, passage without it) for a prose sentence of the passage, chosen by a hash; None if there is none."""
    prose = [p for p in passage.split("\n\n") if not p.startswith("   ")]
    candidates: list[str] = []
    for para in prose:
        flat = " ".join(line.strip() for line in para.split("\n"))
        candidates += [s for s in SENTENCE_END.split(flat) if 40 <= len(s) <= 300]
    if len(candidates) < 2:
        return None
    pick = candidates[int(hashlib.sha1(salt.encode()).hexdigest(), 16) % len(candidates)]
    rest = " ".join(" ".join(l.strip() for l in p.split("\n")) if not p.startswith("   ") else p
                    for p in passage.split("\n\n"))
    rest = re.sub(r"\s+", " ", rest.replace(pick, " ")).strip()
    if len(rest) < MIN_PASSAGE_CHARS:
        return None
    return pick, rest


def load_pydoc(source: SourceConfig, seed: int = 42, topics: dict[str, str] | None = None) -> PydocData:
    """Training records from the non-held-out sections, and the held-out sections as a BEIR task (test queries, dev
    queries, one corpus)."""
    if topics is None:
        from pydoc_data.topics import topics as installed

        topics = installed
    sections = parse_sections(topics)
    counts: dict[str, int] = {}
    for s in sections:
        counts[s.heading] = counts.get(s.heading, 0) + 1
    ambiguous = {h for h, n in counts.items() if n > 1 or h.lower() in ("overview", "examples", "notes")}
    threshold = int(source.holdout_fraction * 10_000)
    dev_threshold = threshold + int(source.dev_fraction * 10_000)
    training = Loaded()
    data = PydocData(training=training, instruction=source.instruction)
    for section in sections:
        band = int(hashlib.sha1(f"{seed}:{section.key}".encode()).hexdigest(), 16) % 10_000
        ids = [f"pydoc-{section.key[:12]}-{i}" for i in range(len(section.passages))]
        query = _heading_query(section, ambiguous)
        data.eval_corpus.update(zip(ids, section.passages))
        if band < dev_threshold:
            qid = f"q-{section.key[:12]}"
            queries, qrels = (data.eval_queries, data.eval_qrels) if band < threshold else \
                (data.dev_queries, data.dev_qrels)
            queries[qid] = query
            qrels[qid] = {doc_id: 1 for doc_id in ids}
            continue
        training.documents.update(zip(ids, section.passages))
        training.records.append(Record(
            id=f"{source.name}-h-{section.key[:12]}", task_type=source.task_type, instruction=source.instruction,
            query=query, positives=section.passages[:4], positive_ids=ids[:4], language=source.language,
            source=source.name))
        for i, passage in enumerate(section.passages):
            pair = _ict_sentence(passage, f"{seed}:{ids[i]}")
            if pair is None:
                continue
            sentence, rest = pair
            training.records.append(Record(
                id=f"{source.name}-ict-{section.key[:12]}-{i}", task_type=source.task_type,
                instruction=ICT_INSTRUCTION, query=sentence, positives=[rest], positive_ids=[ids[i]],
                language=source.language, source=source.name))
    if source.max_records:
        training.records = training.records[: source.max_records]
    return data
