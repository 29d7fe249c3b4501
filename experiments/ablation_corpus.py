"""The architecture ablation's pretraining corpus and its one shared SentencePiece vocabulary.

Unlabeled text from the TRAINING splits of the bundled corpora only, as the fine-tuning tasks
define them (research/data/tasks.py's builders and their parsers; Tiny Shakespeare's first 90%):
Tiny Shakespeare's speeches, both sides of spa_eng (Spanish, then English), SST-2 sentences,
SQuAD contexts, SciTLDR abstracts and Alpaca records (instruction, input and output), each
source's units joined in file order into documents of about DOC_CHARS characters. Every
sentence or paragraph appears once (exact repeats dropped; Shakespeare kept as it is), and a
training unit that holds validation or test text of any corpus is dropped (`find_leaks`): the
sources themselves share text across splits. The pretraining validation file holds the
corpora's validation parts (never their test parts), up to VALIDATION_CHARS_PER_SOURCE
characters of each, so that every domain weighs alike in the validation loss.

  python -m experiments.ablation_corpus --out=runs/ablation_corpus

writes OUT/train.jsonl, OUT/validation.jsonl (one {"text": document} a line), OUT/stats.json
and OUT/tokenizer/ (a research.data.tokenizers SentencePiece model of VOCAB_SIZE pieces with
every special token the arms' objectives need), then prints the sizes. A second run with
unchanged data files reuses what is there. An arm pretrains on it with the overrides of
`pretrain_overrides(OUT)` after `install_tokenizer(OUT, workdir)` has given its workdir the
shared vocabulary (research.train loads a workdir's tokenizer/ instead of training one).

Built 2026-12-02 on 2 heavily shared cores of an Intel Xeon (AVX-512, no AMX) in 9 s (corpus)
+ 57 s (vocabulary): 5,752 training documents, 12.4M characters, 3.94M tokens (3.1 characters
a token); validation 128 documents, 285k characters, 95k tokens. Dropped: 14,827 exact repeats
and 286 units holding held-out text (82 Tiny Shakespeare speeches that recur in its validation
part, 200 spa_eng sentences, 198 of them Spanish ones of validation/test pairs, 1 SST-2 phrase,
3 SciTLDR abstracts that are also validation/test abstracts).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import sys
import time
from typing import Iterable, Iterator

if __package__ in (None, ""):  # run as a file: make the repository importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
from etils import epath

from research import objectives, paths
from research.config import ObjectiveConfig
# pylint: enable=wrong-import-position

# 4096 pieces for ~0.8M-parameter models of width 128: the tied embedding is 0.52M parameters
# (8,000 would be 1.02M, more than the 0.79M in the blocks) and the output layer costs
# 2 * 128 * 4096 = 1.0M FLOPs a token against the blocks' 1.6M (8,000: 2.0M).
VOCAB_SIZE = 4096
VALIDATION_CHARS_PER_SOURCE = 50_000
# Units are joined into documents of about this many characters: research.data reads a corpus
# record by record (~1 ms each here), so 200k one-sentence documents took minutes per workdir.
DOC_CHARS = 2_000
# What separates consecutive units inside a document: a line for sentences, a blank line for
# paragraphs, speeches and records (which hold lines of their own).
SEPARATORS = {"tiny_shakespeare": "\n\n", "spa_eng": "\n", "sst2": "\n", "squad": "\n\n",
              "scitldr": "\n\n", "alpaca": "\n\n"}
# Held-out texts of at least this many characters must not occur anywhere in the corpus, not
# even inside a longer document; a shorter one (a spa_eng sentence "Tom is here.") only as a
# whole line (sentence) of it, since as part of longer text it is ordinary language.
MIN_SUBSTRING_CHARS = 31
# An occurrence of >= 2W-1 characters covers a whole window at a multiple of W.
_WINDOW = (MIN_SUBSTRING_CHARS + 1) // 2
SOURCES = ("tiny_shakespeare", "spa_eng", "sst2", "squad", "scitldr", "alpaca")
TRAIN_FILE, VALIDATION_FILE, STATS_FILE, TOKENIZER_DIR = (
    "train.jsonl", "validation.jsonl", "stats.json", "tokenizer")
_FORMAT = 2  # bump when the corpus recipe changes: a cached corpus of another recipe is rebuilt


def special_tokens() -> tuple[str, ...]:
  """Every special token an objective can ask for (<mask>, T5 sentinels, UL2 modes), so that
  every arm takes the one vocabulary as it is."""
  tokens: dict[str, None] = {}
  for name in ("masked_lm", "span_corruption", "ul2"):
    tokens.update(dict.fromkeys(objectives.required_special_tokens(ObjectiveConfig(name=name))))
  return tuple(tokens)


# ---------------------------------------------------------------------------------------------
# The bundled corpora, split as the fine-tuning tasks split them
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def records(task: str, split: str, data_root: pathlib.Path) -> list[dict]:
  """The parsed records of a split (cached: callers must not modify them)."""
  from research.data import tasks  # pylint: disable=import-outside-toplevel  (loads TFDS)
  builder = tasks.BUILDERS[task]
  return list(builder.parse(epath.Path(data_root) / builder.FOLDER / builder.FILES[split]))


def _splits(task: str) -> tuple[str, ...]:
  from research.data import tasks  # pylint: disable=import-outside-toplevel
  return tuple(tasks.BUILDERS[task].FILES)


def _shakespeare(data_root: pathlib.Path) -> dict[str, list[str]]:
  """Speeches (blocks between blank lines) of the train and validation parts, split where
  research.data.corpora splits the text (nanoGPT's first 90% of characters)."""
  from research.data import corpora  # pylint: disable=import-outside-toplevel
  text = (data_root / "tiny_shakespeare" / "input.txt").read_text(encoding="utf-8")
  n_train = int(len(text) * corpora.TRAIN_FRACTION)
  speeches = lambda part: [s.strip("\n") for s in part.split("\n\n") if s.strip()]
  return {"train": speeches(text[:n_train]), "validation": speeches(text[n_train:])}


def source_texts(source: str, split: str, data_root: pathlib.Path) -> list[str]:
  """The units of text (sentences, paragraphs, speeches, records) of one split of a source."""
  if source == "tiny_shakespeare":
    return _shakespeare(data_root).get(split, [])
  if split not in _splits(source):
    return []
  rows = records(source, split, data_root)
  if source == "spa_eng":
    return [r[side] for side in ("es", "en") for r in rows]  # one language, then the other
  if source == "sst2":
    return [r["sentence"] for r in rows]
  if source == "squad":
    return [r["context"] for r in rows]
  if source == "scitldr":
    return [r["document"] for r in rows]
  if source == "alpaca":
    return ["\n".join(r[k] for k in ("instruction", "input", "output") if r[k]) for r in rows]
  raise ValueError(f"unknown source {source!r}; the sources are {SOURCES}")


def heldout_texts(data_root: pathlib.Path) -> dict[str, list[str]]:
  """Per source, every text of its validation and test splits that must stay out of the
  corpus: besides the units above, SQuAD questions, SciTLDR reference summaries and each Alpaca
  field on its own."""
  out = {}
  for source in SOURCES:
    texts = []
    for split in ("validation", "test"):
      texts += source_texts(source, split, data_root)
      if source == "squad" and split in _splits(source):
        texts += [r["question"] for r in records(source, split, data_root)]
      if source == "scitldr" and split in _splits(source):
        texts += [s for r in records(source, split, data_root) for s in r["all_summaries"]]
      if source == "alpaca" and split in _splits(source):
        texts += [r[k] for r in records(source, split, data_root) for k in r if r[k].strip()]
    out[source] = texts
  return out


# ---------------------------------------------------------------------------------------------
# Leaks: held-out text inside training text
# ---------------------------------------------------------------------------------------------


def find_leaks(documents: list[str], heldout: Iterable[str]) -> set[int]:
  """Indices of the documents that hold a held-out text: one of >= MIN_SUBSTRING_CHARS
  characters anywhere, a shorter one as a whole (stripped) line.

  Long texts are found exactly through an index of each document's windows of W characters at
  offsets 0, W, 2W, ...: an occurrence of >= 2W-1 characters covers at least one of them.
  """
  w = _WINDOW
  windows: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
  lines: dict[str, set[int]] = collections.defaultdict(set)
  for d, doc in enumerate(documents):
    for pos in range(0, len(doc) - w + 1, w):
      windows[doc[pos:pos + w]].append((d, pos))
    for line in doc.split("\n"):
      lines[line.strip()].add(d)
  leaks: set[int] = set()
  for text in heldout:
    text = text.strip()
    if len(text) < MIN_SUBSTRING_CHARS:
      leaks |= lines.get(text, set())
      continue
    for r in range(w):  # the occurrence starts r characters before an aligned window
      hits = []  # (offset in text, where that window sits in documents)
      for o in range(r, len(text) - w + 1, w):
        hits.append((o, windows.get(text[o:o + w])))
        if not hits[-1][1]:
          break
      else:  # every window is somewhere: check where the rarest one is
        o, anchor = min(hits, key=lambda hit: len(hit[1]))
        leaks |= {d for d, pos in anchor if pos >= o and documents[d].startswith(text, pos - o)}
  return leaks


# ---------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Corpus:
  train: dict[str, list[str]]  # source -> documents
  validation: dict[str, list[str]]
  duplicates: dict[str, int]  # source -> training units dropped as exact repeats
  leaks: dict[str, int]  # source -> training units dropped for holding held-out text


def _dedupe(texts: list[str]) -> list[str]:
  return list(dict.fromkeys(texts))


def _group(units: list[str], separator: str, max_chars: int = DOC_CHARS) -> list[str]:
  """Consecutive units joined by `separator` into documents of about max_chars."""
  docs, current, size = [], [], 0
  for unit in units:
    current.append(unit)
    size += len(unit) + len(separator)
    if size >= max_chars:
      docs.append(separator.join(current))
      current, size = [], 0
  return docs + ([separator.join(current)] if current else [])


def _first_chars(docs: list[str], max_chars: int) -> list[str]:
  out, total = [], 0
  for doc in docs:
    if total >= max_chars:
      break
    out.append(doc)
    total += len(doc)
  return out


def build_corpus(data_root: pathlib.Path = paths.DATA_ROOT) -> Corpus:
  """The training documents and pretraining validation documents, per source (deterministic:
  file order, first occurrence kept)."""
  data_root = pathlib.Path(data_root)
  heldout = [t for texts in heldout_texts(data_root).values() for t in texts]
  units = {}  # source -> its training units, exact repeats dropped (Shakespeare kept whole)
  for source in SOURCES:
    texts = source_texts(source, "train", data_root)
    units[source] = texts if source == "tiny_shakespeare" else _dedupe(texts)
  leaking = find_leaks(_flat(units), heldout)  # indices into the sources' units, in order
  train, validation, duplicates, leaks, first = {}, {}, {}, {}, 0
  for source in SOURCES:
    kept = [u for i, u in enumerate(units[source], first) if i not in leaking]
    first += len(units[source])
    duplicates[source] = len(source_texts(source, "train", data_root)) - len(units[source])
    leaks[source] = len(units[source]) - len(kept)
    val = source_texts(source, "validation", data_root)
    val = val if source == "tiny_shakespeare" else _dedupe(val)
    train[source] = _group(kept, SEPARATORS[source])
    validation[source] = _first_chars(_group(val, SEPARATORS[source]),
                                      VALIDATION_CHARS_PER_SOURCE)
  return Corpus(train, validation, duplicates, leaks)


def _flat(docs: dict[str, list[str]]) -> list[str]:
  return [d for source in SOURCES for d in docs[source]]


def _jsonl(docs: list[str]) -> str:
  return "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs)


def write_corpus(train: list[str], validation: list[str], out: str | os.PathLike) -> None:
  """OUT/train.jsonl then OUT/validation.jsonl: a data.files folder whose documents in order
  (files sorted by name) end with the validation ones, as research.data.corpora splits it."""
  assert TRAIN_FILE < VALIDATION_FILE  # the validation documents come last
  out = epath.Path(out)
  paths.write_atomic(out / TRAIN_FILE, _jsonl(train))
  paths.write_atomic(out / VALIDATION_FILE, _jsonl(validation))


def validation_fraction(num_train: int, num_validation: int) -> float:
  """data.validation_fraction that holds out exactly the last num_validation documents."""
  fraction = num_validation / (num_train + num_validation)
  assert round((num_train + num_validation) * fraction) == num_validation
  return fraction


def pretrain_overrides(out: str | os.PathLike) -> dict[str, object]:
  """Config overrides ("section.key" -> value) that pretrain an arm on the built corpus with the
  shared vocabulary (its workdir needs `install_tokenizer` first)."""
  stats = json.loads((epath.Path(out) / STATS_FILE).read_text())
  return {"data.dataset": "text_files", "data.files": os.fspath(paths.workdir_path(out)),
          "data.text_key": "text", "data.train_split": "train", "data.eval_split": "validation",
          "data.validation_fraction": validation_fraction(stats["train"]["documents"],
                                                          stats["validation"]["documents"]),
          "data.tokenizer": "sentencepiece", "data.vocab_size": VOCAB_SIZE}


def install_tokenizer(out: str | os.PathLike, workdir: str | os.PathLike) -> None:
  """Gives `workdir` the shared vocabulary (unless it has a tokenizer already), as init_from
  gives a fine-tuning run its pretrained one."""
  from research import tasks  # pylint: disable=import-outside-toplevel
  tasks.copy_tokenizer(out, workdir)


def train_vocabulary(train: Iterable[str], vocab_size: int = VOCAB_SIZE):
  """A SentencePiece unigram model trained on the documents, with every special token."""
  from research.data import tokenizers  # pylint: disable=import-outside-toplevel
  return tokenizers.SentencePieceTokenizer.train(train, vocab_size, special_tokens())


def _data_key(data_root: pathlib.Path) -> str:
  """What the corpus depends on: the recipe, the vocabulary size and every bundled file read."""
  digest = hashlib.sha256(json.dumps([_FORMAT, VOCAB_SIZE, MIN_SUBSTRING_CHARS,
                                      VALIDATION_CHARS_PER_SOURCE, DOC_CHARS, SEPARATORS,
                                      special_tokens()]).encode())
  for source in ("tiny_shakespeare", "spa_eng", "sst2", "squad_v1_1", "scitldr",
                 "alpaca_instructions"):
    for path in sorted((data_root / source).iterdir()):
      if path.suffix in (".txt", ".tsv", ".jsonl"):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
  return digest.hexdigest()


def _sizes(docs: list[str], tokenizer) -> dict[str, int]:
  # +1 token per document: the EOS the pipeline puts after each.
  return {"documents": len(docs), "characters": sum(len(d) for d in docs),
          "tokens": sum(len(tokenizer.encode(d)) + 1 for d in docs)}


def build(out: str | os.PathLike, data_root: pathlib.Path = paths.DATA_ROOT,
          log=lambda *a: print(*a, file=sys.stderr)) -> dict:
  """Builds corpus and vocabulary into OUT (reused when its stats.json is of the same data and
  recipe); returns the stats."""
  from research.data import tokenizers  # pylint: disable=import-outside-toplevel
  out, data_root = pathlib.Path(out), pathlib.Path(data_root)
  key = _data_key(data_root)
  stats_path = out / STATS_FILE
  if stats_path.exists() and (out / TOKENIZER_DIR / tokenizers.MANIFEST).exists():
    stats = json.loads(stats_path.read_text())
    if stats.get("key") == key:
      log(f"corpus in {out} is up to date; reusing it")
      return stats
  start = time.perf_counter()
  corpus = build_corpus(data_root)
  train, validation = _flat(corpus.train), _flat(corpus.validation)
  write_corpus(train, validation, out)
  corpus_s = time.perf_counter() - start
  log(f"corpus built in {corpus_s:.1f}s; training the {VOCAB_SIZE}-piece vocabulary")
  start = time.perf_counter()
  tokenizer = train_vocabulary(train)
  vocab_s = time.perf_counter() - start
  tokenizer.save(out / TOKENIZER_DIR)
  stats = {
      "key": key, "vocab_size": tokenizer.vocab_size, "seconds": {
          "corpus": round(corpus_s, 1), "vocabulary": round(vocab_s, 1)},
      "train": _sizes(train, tokenizer), "validation": _sizes(validation, tokenizer),
      "sources": {s: {"train": _sizes(corpus.train[s], tokenizer),
                      "validation": _sizes(corpus.validation[s], tokenizer),
                      "duplicates_dropped": corpus.duplicates[s],
                      "leaks_dropped": corpus.leaks[s]} for s in SOURCES}}
  paths.write_atomic(epath.Path(stats_path), json.dumps(stats, indent=1))  # last: the marker
  return stats


def _table(stats: dict) -> Iterator[str]:
  yield (f"{'source':<17}{'train docs':>11}{'chars':>11}{'tokens':>10}{'val docs':>9}"
         f"{'chars':>9}{'tokens':>9}{'dups':>7}{'leaks':>6}")
  rows = [(s, v["train"], v["validation"], v["duplicates_dropped"], v["leaks_dropped"])
          for s, v in stats["sources"].items()]
  rows.append(("total", stats["train"], stats["validation"], "", ""))
  for name, tr, va, dups, leaks in rows:
    yield (f"{name:<17}{tr['documents']:>11,}{tr['characters']:>11,}{tr['tokens']:>10,}"
           f"{va['documents']:>9,}{va['characters']:>9,}{va['tokens']:>9,}{dups:>7}{leaks:>6}")


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="folder for the corpus and vocabulary")
  args = parser.parse_args(argv)
  stats = build(args.out)
  print("\n".join(_table(stats)))
  print(f"vocabulary: {stats['vocab_size']} pieces; built in {stats['seconds']['corpus']}s "
        f"(corpus) + {stats['seconds']['vocabulary']}s (vocabulary)")
  overrides = " ".join(f"--config.{k}={v}" for k, v in pretrain_overrides(args.out).items())
  print(f"pretrain an arm: install_tokenizer(OUT, WORKDIR), then research.train {overrides}")


if __name__ == "__main__":
  main()
