"""A PyTorch peer of our GPT train step, for speed comparison: nanoGPT's architecture and step.

Runs in its own Python with torch (not the project's venv):
  python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy
  /tmp/torchenv/bin/python benchmarks/torch_peer_gpt.py --shape=small --steps=30

Model: token + learned position embeddings, pre-norm blocks (LayerNorm without bias, causal
self-attention through F.scaled_dot_product_attention, MLP 4x with exact GELU), final
LayerNorm, LM head tied to the token embedding, no biases, no dropout: configs/
gpt_shakespeare_char_nanogpt.py in our code. Step: forward, cross-entropy, backward, clip the
global gradient norm at 1.0, AdamW (weight decay on 2-D parameters), eager fp32, 2 threads.
Batches are random tokens (speed does not depend on them).

--serve: reads "N" lines on stdin, runs N timed steps, answers with one JSON line of step
times (benchmarks/compare_torch_peer.py drives it interleaved with our step).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

SHAPES = {  # layers, heads, width, context, batch
    "small": (4, 4, 128, 64, 12),
    "10.7m": (6, 6, 384, 256, 8),
}
VOCAB = 65  # Tiny Shakespeare's characters


class Block(nn.Module):

  def __init__(self, width: int, heads: int):
    super().__init__()
    self.heads = heads
    self.attn_norm = nn.LayerNorm(width, bias=False)
    self.qkv = nn.Linear(width, 3 * width, bias=False)
    self.proj = nn.Linear(width, width, bias=False)
    self.mlp_norm = nn.LayerNorm(width, bias=False)
    self.fc = nn.Linear(width, 4 * width, bias=False)
    self.fc_out = nn.Linear(4 * width, width, bias=False)

  def forward(self, x):
    b, t, c = x.shape
    q, k, v = self.qkv(self.attn_norm(x)).split(c, dim=2)
    q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    x = x + self.proj(y.transpose(1, 2).contiguous().view(b, t, c))
    return x + self.fc_out(F.gelu(self.fc(self.mlp_norm(x))))


class GPT(nn.Module):

  def __init__(self, layers: int, heads: int, width: int, context: int):
    super().__init__()
    self.token = nn.Embedding(VOCAB, width)
    self.position = nn.Embedding(context, width)
    self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
    self.norm = nn.LayerNorm(width, bias=False)
    self.head = nn.Linear(width, VOCAB, bias=False)
    self.head.weight = self.token.weight  # tied
    for name, p in self.named_parameters():
      if p.dim() == 2:
        std = 0.02 / math.sqrt(2 * layers) if name.endswith(("proj.weight", "fc_out.weight")) \
            else 0.02
        nn.init.normal_(p, 0.0, std)

  def forward(self, idx, targets):
    t = idx.shape[1]
    x = self.token(idx) + self.position(torch.arange(t))
    for block in self.blocks:
      x = block(x)
    logits = self.head(self.norm(x))
    return F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1))


def build(shape: str, threads: int = 2):
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  layers, heads, width, context, batch = SHAPES[shape]
  model = GPT(layers, heads, width, context)
  decay = [p for p in model.parameters() if p.dim() >= 2]
  no_decay = [p for p in model.parameters() if p.dim() < 2]
  optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=1e-3, betas=(0.9, 0.99))
  rng = np.random.default_rng(0)
  batches = [(torch.from_numpy(rng.integers(0, VOCAB, (batch, context))),
              torch.from_numpy(rng.integers(0, VOCAB, (batch, context)))) for _ in range(4)]

  def step(i: int) -> float:
    x, y = batches[i % len(batches)]
    loss = model(x, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.item()

  return model, step


def timed_steps(step, n: int, start: int = 0) -> list[float]:
  times = []
  for i in range(n):
    begin = time.perf_counter()
    step(start + i)
    times.append(time.perf_counter() - begin)
  return times


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--serve", action="store_true")
  args = parser.parse_args()
  model, step = build(args.shape, args.threads)
  timed_steps(step, args.warmup)
  params = sum(p.numel() for p in model.parameters())
  if args.serve:
    print(json.dumps({"ready": True, "parameters": params}), flush=True)
    done = args.warmup
    for line in sys.stdin:
      n = int(line)
      times = timed_steps(step, n, done)
      done += n
      print(json.dumps({"step_s": times}), flush=True)
    return
  times = timed_steps(step, args.steps, args.warmup)
  print(f"torch {torch.__version__}, {args.shape} ({params / 1e6:.2f}M parameters): "
        f"{1e3 * np.median(times):.2f} ms/step median over {args.steps} steps")


if __name__ == "__main__":
  main()
