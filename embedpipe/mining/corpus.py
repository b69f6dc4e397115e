"""The mining corpus on disk: one validating scan, then per-document arrays instead of texts in memory.

The scan keeps four 8-byte numbers per document (byte offset, line number, id hash, text hash), so a 100M-document
corpus costs 3.2 GB here rather than its full text; texts are read back by offset only for the negatives that are chosen.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np


class CorpusError(ValueError):
    """A corpus that cannot be mined: names the file, the line and the field."""


def text_key(text: str) -> str:
    """Texts are 'identical' when equal after stripping surrounding whitespace."""
    return text.strip()


def hash64(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest(), "little")


def hash64_array(values: Sequence[str]) -> np.ndarray:
    return np.fromiter((hash64(v) for v in values), dtype=np.uint64, count=len(values))


def _parse(raw: bytes, path: Path, line_no: int) -> tuple[str, str]:
    """One corpus line -> (id, text). Accepts ``{"id","text"}`` and BEIR's ``{"_id","title","text"}``."""
    try:
        row = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorpusError(f"{path}:{line_no}: malformed JSON ({err})") from None
    if not isinstance(row, dict):
        raise CorpusError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
    doc_id = row.get("id", row.get("_id"))
    if doc_id is None or (isinstance(doc_id, str) and not doc_id.strip()):
        raise CorpusError(f"{path}:{line_no}: field 'id': missing or empty")
    text = row.get("text")
    if not isinstance(text, str):
        raise CorpusError(f"{path}:{line_no}: field 'text': missing or not a string")
    title = row.get("title")
    if isinstance(title, str) and title.strip():
        text = f"{title.strip()} {text}"
    if not text.strip():
        raise CorpusError(f"{path}:{line_no}: field 'text': empty text (document {doc_id!r})")
    return str(doc_id), text


class Corpus:
    """A validated JSONL corpus: ``len``, ``chunk(i)`` texts, ``texts(indices)``, ``ids(indices)``, id/text lookup.

    ``path`` may be several files, one corpus in that order (the data step's corpus, then the documents SDG wrote):
    document ``i`` of the second file is ``len(first) + i``, ids are unique across all of them."""

    def __init__(self, path: str | Path | Sequence[str | Path]):
        self.paths = [Path(p) for p in path] if isinstance(path, (list, tuple)) else [Path(path)]
        if not self.paths:
            raise CorpusError("no corpus file given")
        self.path = self.paths[0]
        # array.array: 8 bytes per value while scanning (a list of ints costs ~36)
        offsets, lines, id_hashes, text_hashes = array("q"), array("q"), array("Q"), array("Q")
        starts = []
        for path in self.paths:
            if not path.is_file():
                raise CorpusError(f"corpus file {path} does not exist")
            starts.append(len(offsets))
            with open(path, "rb") as fh:
                pos = 0
                for line_no, raw in enumerate(fh, start=1):
                    if raw.strip():
                        doc_id, text = _parse(raw, path, line_no)
                        offsets.append(pos)
                        lines.append(line_no)
                        id_hashes.append(hash64(doc_id))
                        text_hashes.append(hash64(text_key(text)))
                    pos += len(raw)
        if not offsets:
            raise CorpusError(f"corpus {', '.join(map(str, self.paths))} has no documents")
        self._starts = np.array(starts, dtype=np.int64)  # first document index of each file
        self.offsets = np.frombuffer(offsets, dtype=np.int64)
        self.lines = np.frombuffer(lines, dtype=np.int64)  # errors on read-back name the line, as the scan does
        self.id_hash = np.frombuffer(id_hashes, dtype=np.uint64)
        self.text_hash = np.frombuffer(text_hashes, dtype=np.uint64)
        self._id_order = np.argsort(self.id_hash, kind="stable")
        self._text_order = np.argsort(self.text_hash, kind="stable")
        self._id_sorted = sorted_ids = self.id_hash[self._id_order]
        self._text_sorted = self.text_hash[self._text_order]
        dup = np.nonzero(sorted_ids[1:] == sorted_ids[:-1])[0]
        if dup.size:
            first, second = sorted(self._id_order[dup[0] : dup[0] + 2])
            doc_id = self._read(int(first))[0]
            where = self.file_of(int(first))
            first_at = f"line {lines[int(first)]}" if where == self.file_of(int(second)) else f"{where}:{lines[int(first)]}"
            raise CorpusError(f"{self.file_of(int(second))}:{lines[int(second)]}: field 'id': duplicate id {doc_id!r} "
                              f"(first at {first_at})")
        self.duplicate_texts = int(len(self.text_hash) - np.unique(self.text_hash).size)

    def __len__(self) -> int:
        return len(self.offsets)

    def _file_index(self, index: int) -> int:
        return int(np.searchsorted(self._starts, index, side="right") - 1)

    def file_of(self, index: int) -> Path:
        """The file document ``index`` is in."""
        return self.paths[self._file_index(index)]

    @property
    def fingerprint(self) -> str:
        """Changes when any id or text changes (used in the mining summary, not the cache: chunks have their own)."""
        h = hashlib.sha256(self.id_hash.tobytes())
        h.update(self.text_hash.tobytes())
        return h.hexdigest()[:16]

    def _read(self, index: int, handles: dict | None = None) -> tuple[str, str]:
        own = handles is None
        handles = {} if own else handles
        f = self._file_index(index)
        try:
            fh = handles.get(f)
            if fh is None:
                fh = handles[f] = open(self.paths[f], "rb")
            fh.seek(int(self.offsets[index]))
            return _parse(fh.readline(), self.paths[f], int(self.lines[index]))
        finally:
            if own:
                for fh in handles.values():
                    fh.close()

    def read(self, indices: Sequence[int]) -> list[tuple[str, str]]:
        """(id, text) of the given documents, read by byte offset."""
        handles: dict = {}
        try:
            return [self._read(int(i), handles) for i in indices]
        finally:
            for fh in handles.values():
                fh.close()

    def chunk(self, start: int, stop: int) -> tuple[list[str], list[str]]:
        """Ids and texts of documents ``start:stop`` (one sequential read per file)."""
        ids, texts = [], []
        while start < stop:
            f = self._file_index(start)
            end = min(stop, int(self._starts[f + 1]) if f + 1 < len(self._starts) else stop)
            path = self.paths[f]
            with open(path, "rb") as fh:
                fh.seek(int(self.offsets[start]))
                line_no = int(self.lines[start]) - 1
                wanted = len(ids) + end - start
                while len(ids) < wanted:
                    raw = fh.readline()
                    line_no += 1
                    if not raw:
                        raise CorpusError(f"{path}: ended at line {line_no} while reading documents {start}:{end}; "
                                          "the file changed after it was scanned")
                    if not raw.strip():
                        continue
                    doc_id, text = _parse(raw, path, line_no)
                    ids.append(doc_id)
                    texts.append(text)
            start = end
        return ids, texts

    def chunk_hash(self, start: int, stop: int) -> str:
        """Identifies the ids and texts of one chunk (the cache validates each chunk by it)."""
        h = hashlib.sha256(self.id_hash[start:stop].tobytes())
        h.update(self.text_hash[start:stop].tobytes())
        return h.hexdigest()[:24]

    def chunks(self, chunk_size: int) -> Iterator[tuple[int, int]]:
        for start in range(0, len(self), chunk_size):
            yield start, min(start + chunk_size, len(self))

    def find_ids(self, ids: Sequence[str]) -> np.ndarray:
        """Corpus index of each id, -1 where the id is not in the corpus."""
        return self._lookup(hash64_array(ids), self._id_sorted, self._id_order)

    def find_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Index of a document with each text (after stripping), -1 where none has it."""
        return self._lookup(hash64_array([text_key(t) for t in texts]), self._text_sorted, self._text_order)

    @staticmethod
    def _lookup(keys: np.ndarray, sorted_values: np.ndarray, order: np.ndarray) -> np.ndarray:
        if keys.size == 0:
            return np.zeros(0, dtype=np.int64)
        pos = np.searchsorted(sorted_values, keys)
        pos_clipped = np.minimum(pos, len(sorted_values) - 1)
        found = sorted_values[pos_clipped] == keys
        return np.where(found, order[pos_clipped], -1).astype(np.int64)
