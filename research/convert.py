"""Hugging Face checkpoints (BERT, GPT-2, T5, Llama 3, Qwen 2.5 / 3, Gemma 3 text) in and out of
training workdirs.

  python -m research.convert --from_hf=DIR --workdir=OUT   # HF model directory -> workdir
  python -m research.convert --to_hf=OUT --workdir=DIR     # workdir -> HF model directory
      [--weights_dtype=bfloat16] [--max_shard_mb=2048]     # bf16 weights, sharded files

  python -m research.convert --from_gguf=gemma3-270m --workdir=OUT  # a GGUF file or named model
  python -m research.convert --to_gguf=OUT.gguf --workdir=DIR [--gguf_dtype=f16]

DIR holds config.json, model.safetensors and, when it has one, tokenizer.json (no PyTorch needed).
A GGUF file (llama.cpp; research/gguf_io.py) holds the model and its vocabulary in one file; a
named model (gguf_io.PRETRAINED) is the file an installed package ships.
An imported workdir is what research.train writes, so research.generate, research.evaluate and
fine-tuning with --config.init_from=OUT take it: OUT/config.json (data.tokenizer='hf', the
family's pretraining objective, data on Tiny Shakespeare), OUT/tokenizer/, and a checkpoint of
step 0 holding the parameters and a fresh optimizer state. OUT/hf_import/ keeps the original
config.json and tokenizer side files, which an export reuses.

From Python (a notebook):

  from research import convert
  model, params, tokenizer, config = convert.load_hf("path/to/gpt2")
  model, params, tokenizer, config = convert.load_pretrained("gemma3-270m")  # or a path
  logits = model.apply({"params": params}, tokenizer.encode("Hello world")[None])

The weight mapping itself is research/hf.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
from absl import app, flags
from etils import epath
from flax import traverse_util

from research import checkpoint as ckpt_lib
from research import cli, gguf_io, hf, models, paths
from research import workdir as workdir_lib
from research.config import ExperimentConfig, UserError
from research.data import tokenizers
# experiment_config: importable from here too, as before.
from research.load import (experiment_config, load_experiment_config, pretrained_kind,
                           restore_params, tokenizer_of)
from research.train_state import TrainState, build_optimizer

IMPORT_DIR = "hf_import"  # inside an imported workdir: the original files an export reuses
GGUF_VOCAB_FILE = "gguf_vocab.json"  # in IMPORT_DIR: a GGUF file's tokenizer.* metadata
# Small files of a Hugging Face directory that describe the tokenizer and generation defaults.
_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
# Entries of config.json that transformers derives from others on loading.
_DERIVED_KEYS = ("dense_act_fn", "is_gated_act")


def _print_notes(notes: list[str]) -> None:
  for note in notes:
    print(f"note: {note}", file=sys.stderr)


def _import_notes(imported: hf.Imported, tokenizer, directory: epath.Path) -> list[str]:
  notes = []
  if imported.fresh:
    notes.append(f"the checkpoint lacks {len(imported.fresh)} of our parameters "
                 f"({', '.join(imported.fresh)}): initialised at random")
  if imported.unused:
    notes.append(f"ignored {len(imported.unused)} tensors no mapping reads: "
                 f"{', '.join(imported.unused[:5])}{' ...' if len(imported.unused) > 5 else ''}")
  if tokenizer is None:
    notes.append(f"{directory} has no {hf.TOKENIZER_FILE}: the workdir has no tokenizer, so "
                 "research.generate / evaluate cannot read text with it")
  elif tokenizer.vocab_size > imported.model_config.vocab_size:
    notes.append(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                 f"{imported.model_config.vocab_size} embeddings")
  return notes


def load_hf(directory: str | os.PathLike) -> tuple[Any, Any, Any, ExperimentConfig]:
  """(model, params, tokenizer or None, config) of a Hugging Face directory, in memory.

  `model` is the family's pretraining model (models.build_model): logits are
  `model.apply({"params": params}, tokens)` (encoder_decoder: `(encoder_tokens, decoder_tokens)`).
  """
  directory = epath.Path(directory)
  imported = hf.import_params(directory)
  tokenizer = tokenizer_of(directory)
  _print_notes(_import_notes(imported, tokenizer, directory))
  config = experiment_config(imported.model_config, tokenizer)
  params = jax.tree.map(jnp.asarray, imported.params)
  return models.build_model(config.model), params, tokenizer, config


def import_hf(directory: str | os.PathLike, workdir: str | os.PathLike
              ) -> tuple[ExperimentConfig, list[str]]:
  """Writes the workdir of a Hugging Face directory; returns its config and notes."""
  directory, workdir = epath.Path(directory), paths.workdir_path(workdir)
  paths.check_bucket(workdir)
  workdir_lib.check_writable(workdir)
  _check_import_target(workdir)
  imported = hf.import_params(directory)  # all checks pass before anything is written
  tokenizer = tokenizer_of(directory)
  notes = _import_notes(imported, tokenizer, directory)
  undo = workdir_lib.FailedStartUndo(workdir)  # an import cut short leaves nothing behind
  workdir.mkdir(parents=True, exist_ok=True)
  with workdir_lib.lock(workdir, "research.convert --from_hf"):  # one writer at a time
    undo = _start_import(workdir, undo)  # (refusing here removes nothing: not in the try)
    try:
      config = _write_import(directory, workdir, imported, tokenizer)
      workdir_lib.finish_import(workdir)
      return config, notes
    except BaseException:
      undo.undo()
      raise


def load_gguf(source: str | os.PathLike, dtype: str = "float32"
              ) -> tuple[Any, Any, Any, ExperimentConfig]:
  """(model, params, tokenizer or None, config) of a GGUF file or named model, in memory;
  matrices in `dtype` (float32 or bfloat16: model.param_dtype says which)."""
  imported = gguf_io.import_gguf(source, dtype=dtype)
  _print_notes(_import_notes(imported, imported.tokenizer, epath.Path(str(source))))
  config = experiment_config(imported.model_config, imported.tokenizer)
  config = dataclasses.replace(config, model=dataclasses.replace(config.model, param_dtype=dtype))
  tokenizer = imported.tokenizer
  flat = traverse_util.flatten_dict(imported.params, sep="/")
  del imported  # each numpy array goes once it is on the device: one copy of the model
  params = {}
  for key in list(flat):
    params[key] = jnp.asarray(flat.pop(key))
  params = traverse_util.unflatten_dict(params, sep="/")
  return models.build_model(config.model), params, tokenizer, config


def load_pretrained(source: str | os.PathLike, dtype: str = "float32"
                    ) -> tuple[Any, Any, Any, ExperimentConfig]:
  """load_hf for a Hugging Face directory, load_gguf for a GGUF file or a named model: the
  user names a model, never its format. dtype: of a GGUF load's matrices."""
  if epath.Path(str(source)).is_dir():
    return load_hf(source)
  return load_gguf(source, dtype)


def import_gguf(source: str | os.PathLike, workdir: str | os.PathLike
                ) -> tuple[ExperimentConfig, list[str]]:
  """Writes the workdir of a GGUF file or named model; returns its config and notes. The file's
  vocabulary metadata is kept (IMPORT_DIR/gguf_vocab.json) for an export."""
  workdir = paths.workdir_path(workdir)
  paths.check_bucket(workdir)
  workdir_lib.check_writable(workdir)
  _check_import_target(workdir)
  path = gguf_io.resolve(source)
  imported = gguf_io.import_gguf(path)  # all checks pass before anything is written
  notes = _import_notes(imported, imported.tokenizer, epath.Path(path))
  vocab = {key: {"value": value, "type": kind, "item": item}
           for key, (value, (kind, item)) in imported.vocab.items()}
  undo = workdir_lib.FailedStartUndo(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  with workdir_lib.lock(workdir, "research.convert --from_gguf"):
    undo = _start_import(workdir, undo)  # (refusing here removes nothing: not in the try)
    try:
      config = _write_import(epath.Path(path), workdir, imported, imported.tokenizer,
                             {GGUF_VOCAB_FILE: json.dumps(vocab, ensure_ascii=False)})
      workdir_lib.finish_import(workdir)
      return config, notes
    except BaseException:
      undo.undo()
      raise


def _check_import_target(workdir: epath.Path) -> None:
  """ConvertError when `workdir` holds a run or a finished import; what an import killed
  midway left is no run (it is removed, under the lock, by _start_import)."""
  # Imported here: train pulls in the optimizer and checkpoint machinery, not needed by load_hf.
  if workdir_lib.unfinished_import(workdir):
    return
  if (workdir / "config.json").exists() or ckpt_lib.checkpoint_dir(workdir).exists():
    raise hf.ConvertError(f"{workdir} already holds a workdir; import into a new --workdir")


def _start_import(workdir: epath.Path,
                  undo: workdir_lib.FailedStartUndo) -> workdir_lib.FailedStartUndo:
  """Under the lock: a run that started meanwhile is refused, a killed import's leftovers are
  removed, and this import is marked unfinished until its config.json is written."""
  _check_import_target(workdir)
  return workdir_lib.start_import(workdir, undo)


def _write_import(directory: epath.Path, workdir: epath.Path, imported: hf.Imported,
                  tokenizer, extra: dict[str, str] | None = None) -> ExperimentConfig:
  """The files of an imported workdir: tokenizer, a checkpoint of step 0, the original side
  files (and `extra`: name -> text, into IMPORT_DIR), and config.json last."""
  tokenizer_path = ""
  if tokenizer is not None:
    tokenizer.save(workdir / "tokenizer")
    manifest = json.loads((workdir / "tokenizer" / "manifest.json").read_text("utf-8"))
    tokenizer_path = str(workdir / "tokenizer" / manifest["tokenizer_file"])
  config = experiment_config(imported.model_config, tokenizer, tokenizer_path)
  params = jax.tree.map(jnp.asarray, imported.params)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=build_optimizer(config).init(params))
  checkpointer = ckpt_lib.Checkpointer(workdir, async_save=False)
  try:
    checkpointer.save(0, state, None, config.to_dict(), force=True)
  finally:
    checkpointer.close()
  keep = workdir / IMPORT_DIR
  keep.mkdir(exist_ok=True)
  for name in (hf.CONFIG_FILE, *_SIDE_FILES):
    if (directory / name).is_file():
      (keep / name).write_bytes((directory / name).read_bytes())
  for name, text in (extra or {}).items():
    (keep / name).write_text(text, encoding="utf-8")
  (keep / "import.json").write_text(json.dumps(
      {"source": str(paths.workdir_path(directory)), "fresh": imported.fresh,
       "unused": imported.unused}, indent=1) + "\n")
  # Last, as research.train does: a workdir with a config.json has its checkpoint.
  paths.write_atomic(workdir / "config.json", config.to_json())
  return config


def _check_export_target(out: epath.Path, overwrite: bool) -> None:
  """Refuses to write into a training workdir ever, and over an existing model without
  --overwrite (before the checkpoint is read)."""
  if not paths.is_url(out) and out.exists() and not out.is_dir():
    raise hf.ConvertError(f"--to_hf={out} is a file; pass a directory")
  if (out / "checkpoints").exists() or (out / "metrics.jsonl").exists() or (
      out / IMPORT_DIR).exists():
    raise hf.ConvertError(f"--to_hf={out} is a training workdir (it holds checkpoints); "
                          "exporting there would replace its config.json: pass a new directory")
  existing = [name for name in (hf.CONFIG_FILE, hf.WEIGHTS_FILE, hf.WEIGHTS_INDEX_FILE,
                                 hf.TOKENIZER_FILE) if (out / name).exists()]
  if existing and not overwrite:
    raise hf.ConvertError(f"--to_hf={out} already holds {', '.join(existing)}; pass "
                          "--overwrite to replace them, or a new directory")


def export_hf(workdir: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False,
              dtype: str = "float32", max_shard_mb: int = 0) -> list[str]:
  """Writes the latest checkpoint of a workdir as a Hugging Face directory; returns notes.
  dtype: of the written weights (float32 | bfloat16); max_shard_mb > 0: shards of at most
  that many MiB (model-0000k-of-0000n.safetensors + model.safetensors.index.json)."""
  workdir, out = paths.workdir_path(workdir), paths.workdir_path(out)
  if out == workdir:
    raise hf.ConvertError("--to_hf must name a directory other than --workdir (both hold a "
                          "config.json)")
  paths.check_bucket(out)
  _check_export_target(out, overwrite)
  workdir_lib.check_writable(out, "--to_hf")
  config, _, params = restore_params(workdir)  # a LoRA workdir's: merged into its base
  tokenizer = None
  if (workdir / "tokenizer" / tokenizers.MANIFEST).is_file():
    tokenizer = tokenizers.load_tokenizer(workdir / "tokenizer")
  originals = original_files(workdir, config)
  base_file = originals / hf.CONFIG_FILE if originals else None
  base = (json.loads(base_file.read_text(encoding="utf-8"))
          if base_file and base_file.is_file() else {})
  # An imported model keeps its original token ids; a model trained here takes its tokenizer's.
  special_ids = {} if base or tokenizer is None else {"eos": tokenizer.eos_id,
                                                      "pad": tokenizer.pad_id}
  hf_config, tensors, notes = hf.export_params(config.model, params, special_ids)
  hf_config = {**{k: v for k, v in base.items() if k not in _DERIVED_KEYS}, **hf_config}
  out.mkdir(parents=True, exist_ok=True)
  earlier = [hf.WEIGHTS_FILE, hf.WEIGHTS_INDEX_FILE, *(p.name for p in out.glob("model-*-of-*"))]
  for name in earlier:  # --overwrite: no shard of an earlier export stays beside the new files
    if (out / name).exists():
      (out / name).unlink()
  hf.write_checkpoint(out, tensors, dtype=dtype, max_shard_bytes=max_shard_mb * 2**20)
  paths.write_atomic(out / hf.CONFIG_FILE, json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
  if tokenizer is not None and tokenizer.kind == "hf":
    manifest = json.loads((workdir / "tokenizer" / tokenizers.MANIFEST).read_text())
    paths.write_atomic(out / hf.TOKENIZER_FILE,
                       (workdir / "tokenizer" / manifest["tokenizer_file"]).read_bytes())
    for name in _SIDE_FILES:
      if originals and (originals / name).is_file():
        paths.write_atomic(out / name, (originals / name).read_bytes())
  elif tokenizer is not None:
    notes.append(f"the workdir's tokenizer is '{tokenizer.kind}', which has no tokenizer.json: "
                 "only the model was written")
  return notes


def export_gguf(workdir: str | os.PathLike, out: str | os.PathLike, dtype: str = "f32",
                overwrite: bool = False) -> list[str]:
  """Writes the latest checkpoint of a workdir as one GGUF file (f32 | f16 | bf16 matrices) with
  its vocabulary: a GGUF import's own, else the workdir's byte-level BPE tokenizer.json."""
  workdir, out = paths.workdir_path(workdir), epath.Path(out)
  if paths.is_url(out):
    raise hf.ConvertError(f"--to_gguf={out}: write the file locally, then copy it")
  if out.is_dir():
    raise hf.ConvertError(f"--to_gguf={out} is a directory; name the .gguf file to write")
  if out.exists() and not overwrite:
    raise hf.ConvertError(f"--to_gguf={out} exists; pass --overwrite to replace it")
  config, _, params = restore_params(workdir)  # a LoRA workdir's: merged into its base
  notes = []
  originals = original_files(workdir, config)
  vocab_file = originals / GGUF_VOCAB_FILE if originals else None
  vocab = None
  if vocab_file and vocab_file.is_file():
    vocab = {key: (v["value"], (v["type"], v["item"]))
             for key, v in json.loads(vocab_file.read_text(encoding="utf-8")).items()}
  elif _gguf_source(config) is not None:  # started from a GGUF file: its vocabulary as it is
    f = gguf_io.read_gguf(gguf_io.resolve(_gguf_source(config)))
    vocab = {k: (v, f.types[k]) for k, v in f.metadata.items() if k.startswith("tokenizer.")}
  elif (workdir / "tokenizer" / tokenizers.MANIFEST).is_file():
    tokenizer = tokenizers.load_tokenizer(workdir / "tokenizer")
    if tokenizer.kind == "hf":
      try:
        vocab = gguf_io.vocab_from_tokenizer_json(tokenizer.tokenizer_json, tokenizer.eos_id,
                                                  config.model.vocab_size)
      except hf.ConvertError as e:
        notes.append(f"no vocabulary written: {e}")
    else:
      notes.append(f"the workdir's tokenizer is '{tokenizer.kind}', which GGUF cannot hold: "
                   "only the model was written")
  notes += gguf_io.export_gguf(config.model, params, out, vocab=vocab, dtype=dtype,
                               name=workdir.name)
  return notes


def original_files(workdir: epath.Path, config: ExperimentConfig) -> epath.Path | None:
  """The folder of the original model's files that an export reuses (its config.json, tokenizer
  side files, gguf_vocab.json): an imported workdir's IMPORT_DIR; for a run started from a
  pretrained model (init_from, a LoRA workdir's base) that model's: a workdir's own, a Hugging
  Face folder itself. None when there is none."""
  if (workdir / IMPORT_DIR).is_dir():
    return workdir / IMPORT_DIR
  if not config.init_from or pretrained_kind(config.init_from) not in ("workdir", "hf"):
    return None
  source = epath.Path(config.init_from)
  if pretrained_kind(config.init_from) == "hf":
    return source
  return original_files(source, load_experiment_config(source))


def _gguf_source(config: ExperimentConfig, depth: int = 0) -> str | None:
  """The GGUF file or named model a run started from (through init_from workdirs), if any."""
  if not config.init_from or depth > 8:
    return None
  kind = pretrained_kind(config.init_from)
  if kind in ("gguf", "named"):
    return config.init_from
  if kind == "workdir":
    return _gguf_source(load_experiment_config(config.init_from), depth + 1)
  return None


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def main(argv) -> None:
  cli.quiet_logs()
  cli.reject_positional_args(argv)
  flags_ = flags.FLAGS

  def body():
    from_hf, to_hf, workdir = flags_.from_hf, flags_.to_hf, flags_.workdir
    from_gguf, to_gguf = flags_.from_gguf, flags_.to_gguf
    if sum(map(bool, (from_hf, to_hf, from_gguf, to_gguf))) != 1:
      raise UserError("pass exactly one of --from_hf=HF_DIR / --from_gguf=FILE_OR_NAME (import "
                      "into --workdir) and --to_hf=HF_DIR / --to_gguf=FILE (export --workdir)")
    if not workdir:
      raise UserError("--workdir is required")
    if from_gguf:
      config, notes = import_gguf(from_gguf, workdir)
      m = config.model
      print(f"imported {from_gguf}: {gguf_io.architecture_for(m)}, {m.num_layers} layers, width "
            f"{m.embed_dim}, vocabulary {m.vocab_size}; workdir {paths.workdir_path(workdir)}")
    elif to_gguf:
      notes = export_gguf(workdir, to_gguf, flags_.gguf_dtype, flags_.overwrite)
      print(f"exported {workdir} to {to_gguf}")
    elif from_hf:
      config, notes = import_hf(from_hf, workdir)
      m = config.model
      print(f"imported {from_hf}: family {m.family}, {m.num_layers} layers, width "
            f"{m.embed_dim}, vocabulary {m.vocab_size}; workdir {paths.workdir_path(workdir)}")
    else:
      notes = export_hf(workdir, to_hf, flags_.overwrite, flags_.weights_dtype,
                        flags_.max_shard_mb)
      print(f"exported {workdir} to {paths.workdir_path(to_hf)}")
    _print_notes(notes)

  cli.run_cli(body)


def define_flags() -> None:
  flags.DEFINE_string("from_hf", "", "A Hugging Face model directory to import into --workdir.")
  flags.DEFINE_string("to_hf", "", "A directory to write --workdir into, in Hugging Face layout.")
  flags.DEFINE_string("from_gguf", "", "A GGUF file, or a named model (" + ", ".join(
      gguf_io.PRETRAINED) + "), to import into --workdir.")
  flags.DEFINE_string("to_gguf", "", "A .gguf file to write --workdir into (llama.cpp).")
  flags.DEFINE_enum("gguf_dtype", "f32", ["f32", "f16", "bf16"],
                    "--to_gguf: the type of the written matrices (vectors stay f32).")
  flags.DEFINE_string("workdir", "", "The workdir written (import) or read (export).")
  flags.DEFINE_bool("overwrite", False, "Export over an existing config.json/model.safetensors "
                    "in --to_hf (never over a training workdir), or an existing --to_gguf file.")
  flags.DEFINE_enum("weights_dtype", "float32", list(hf.WEIGHT_DTYPES),
                    "--to_hf: the dtype of the written weights.")
  flags.DEFINE_integer("max_shard_mb", 0, "--to_hf: split the weights into safetensors shards "
                       "of at most this many MiB, with model.safetensors.index.json (0: one "
                       "file).", lower_bound=0)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
