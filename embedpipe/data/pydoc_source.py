"""Python's own documentation (``pydoc_data.topics``) as a real retrieval source.

The topics come from a pinned snapshot shipped with embedpipe (``pydoc_topics.json.gz``: Python 3.11.7's
``pydoc_data.topics``, under the PSF licence like the rest of Python's docs), not from the running interpreter, so the
same recipe gives the same records on every Python (Debian's 3.11.2 in the images, 3.11.7 here, 3.12...): each
patch release rewords some topics. The snapshot's Python version and digest go in the data manifest
(:func:`snapshot_info`). ``python -m embedpipe.data.pydoc_source snapshot FILE`` writes the running interpreter's
topics in the same form (to re-pin: replace the shipped file, and expect the scores to move).

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

import gzip
import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from embedpipe.data.config import SourceConfig
from embedpipe.data.schema import Loaded, Record

UNDERLINE = re.compile(r"^([*=\-~^#])\1{2,}$")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"(])")
ICT_INSTRUCTION = "Given a sentence from the Python documentation, retrieve the passage it comes from"
MAX_PASSAGE_CHARS = 700
MIN_PASSAGE_CHARS = 60
SNAPSHOT = Path(__file__).with_name("pydoc_topics.json.gz")


def topics_digest(topics: dict[str, str]) -> str:
    """sha256 of the topics (sorted, JSON): what the manifest records and the loader checks."""
    return hashlib.sha256(json.dumps(topics, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def write_snapshot(path: str | Path, topics: dict[str, str] | None = None, python: str | None = None) -> dict:
    """``topics`` (default: the running interpreter's ``pydoc_data.topics``) as a snapshot file; its header."""
    if topics is None:
        from pydoc_data.topics import topics as installed

        topics, python = dict(installed), python or sys.version.split()[0]
    header = {"source": "pydoc_data.topics", "python": python or "unknown", "topics": len(topics),
              "sha256": topics_digest(topics)}
    payload = json.dumps({**header, "data": topics}, sort_keys=True, ensure_ascii=False, indent=0).encode()
    Path(path).write_bytes(gzip.compress(payload, 9, mtime=0))  # mtime=0: the same bytes on every run
    return header


@lru_cache(maxsize=4)
def _read_snapshot(path: str) -> tuple[dict, dict[str, str]]:
    try:
        snapshot = json.loads(gzip.decompress(Path(path).read_bytes()))
    except (OSError, EOFError, ValueError) as err:
        raise ValueError(f"{path}: not a pydoc topics snapshot (gzipped JSON): {err}") from err
    for key in ("python", "sha256", "data"):
        if key not in snapshot:
            raise ValueError(f"{path}: pydoc topics snapshot has no field {key!r}")
    topics = snapshot.pop("data")
    if not isinstance(topics, dict) or not all(isinstance(v, str) for v in topics.values()):
        raise ValueError(f"{path}: field 'data' must map topic names to their text")
    if topics_digest(topics) != snapshot["sha256"]:
        raise ValueError(f"{path}: the topics do not match the snapshot's sha256 (the file is damaged)")
    return snapshot, topics


def pinned_topics(path: str | Path = SNAPSHOT) -> dict[str, str]:
    """The pinned snapshot's topics (the same on every interpreter)."""
    return dict(_read_snapshot(str(path))[1])


def snapshot_info(path: str | Path = SNAPSHOT) -> dict:
    """What the data manifest records of the corpus: ``{source, python, topics, sha256}``."""
    return dict(_read_snapshot(str(path))[0])


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
    corpus: dict = field(default_factory=dict)  # where the topics came from: snapshot_info(), or {"source": "given"}


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
    queries, one corpus; ``topics``: default the pinned snapshot)."""
    if topics is None:
        topics, corpus = pinned_topics(), snapshot_info()
    else:
        corpus = {"source": "given", "topics": len(topics), "sha256": topics_digest(topics)}
    sections = parse_sections(topics)
    counts: dict[str, int] = {}
    for s in sections:
        counts[s.heading] = counts.get(s.heading, 0) + 1
    ambiguous = {h for h, n in counts.items() if n > 1 or h.lower() in ("overview", "examples", "notes")}
    threshold = int(source.holdout_fraction * 10_000)
    dev_threshold = threshold + int(source.dev_fraction * 10_000)
    training = Loaded()
    data = PydocData(training=training, instruction=source.instruction, corpus=corpus)
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


def main(argv: list[str] | None = None) -> int:
    """``python -m embedpipe.data.pydoc_source snapshot FILE``: this interpreter's topics as a snapshot file."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m embedpipe.data.pydoc_source")
    parser.add_argument("command", choices=["snapshot"])
    parser.add_argument("file")
    args = parser.parse_args(argv)
    print(json.dumps(write_snapshot(args.file)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
