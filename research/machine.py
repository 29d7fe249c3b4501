"""What a figure was measured on: the CPU kind (AMX, AVX-512 or AVX2 only), the accelerator,
the library versions, and the precision a config resolves to there.

The same seed gives other losses on another kind of machine, because `matmul_dtype="auto"`
resolves to bfloat16 operands where bf16 products are native (AMX CPUs, GPUs, TPUs) and to
float32 elsewhere, and because XLA's CPU kernels differ between instruction sets. Results
(experiments/results.py) and workdirs (precision.json) record these facts next to the numbers.
"""

from __future__ import annotations

import os
import platform as platform_lib
import re
from typing import Any


def _cpuinfo() -> dict[str, str]:
  """The first processor's fields of /proc/cpuinfo ({} where there is none, e.g. macOS)."""
  fields: dict[str, str] = {}
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if not line.strip():
          break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
  except OSError:
    pass
  return fields


def cpu_kind(flags: set[str]) -> str:
  """"AMX" (bf16 matrix units), "AVX-512", "AVX2" or "other": the instruction set that decides
  how fast, and in which precision, matmuls run on this CPU."""
  if "amx_bf16" in flags:
    return "AMX"
  if "avx512f" in flags:
    return "AVX-512"
  if "avx2" in flags:
    return "AVX2"
  return "other"


def describe() -> dict[str, Any]:
  """The machine, as results record it. Imports jax and flax (for their versions and devices)."""
  import flax  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  info = _cpuinfo()
  flags = set(info.get("flags", "").split())
  vendor = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(info.get("vendor_id", ""),
                                                                platform_lib.machine().lower())
  model = info.get("model name", platform_lib.processor() or "unknown CPU")
  if info.get("cpu family"):
    model += f" (family {info['cpu family']}, model {info.get('model', '?')})"
  kind = cpu_kind(flags)
  devices = jax.devices()
  accelerator = None
  if devices[0].platform != "cpu":
    accelerator = f"{len(devices)} x {devices[0].device_kind}"
  extras = [f for f in ("avx512_bf16", "avx512_fp16") if f in flags and kind == "AVX-512"]
  return {
      "cpu": model,
      "cpu_kind": kind,
      "cpu_flags": extras,
      "cores": os.cpu_count(),
      "accelerator": accelerator,
      # A short name for the kind, used to file results: intel-amx, amd-avx512, tpu-v5e, ...
      "tag": (re.sub(r"[^a-z0-9]+", "-", devices[0].device_kind.lower()).strip("-")
              if accelerator else f"{vendor}-{kind.lower().replace('-', '')}"),
      "jax": jax.__version__,
      "flax": flax.__version__,
  }


def summary(machine: dict[str, Any]) -> str:
  """One line: 'Intel Xeon ... (AVX-512 with avx512_bf16, no AMX), 2 cores'."""
  if machine.get("accelerator"):
    return f"{machine['accelerator']} (host: {machine['cpu']}, {machine['cores']} cores)"
  kind = machine["cpu_kind"]
  detail = {"AMX": "AMX", "AVX2": "AVX2 only, no AVX-512 or AMX"}.get(
      kind, f"{kind}{' with ' + ', '.join(machine['cpu_flags']) if machine['cpu_flags'] else ''}"
            ", no AMX")
  return f"{machine['cpu']} ({detail}), {machine['cores']} cores"


def precision_policy(matmul_dtype: str, activation_dtype: str,
                     platform: str | None = None) -> dict[str, str]:
  """The policy a model config resolves to on `platform` (default: where the program runs):
  "auto" becomes what it means here."""
  # Imports jax, as describe() does: this module is read before jax is set up (XLA flags).
  from research import matmul  # pylint: disable=import-outside-toplevel
  return {"matmul_dtype": matmul.resolve_matmul_dtype(matmul_dtype, platform),
          "activation_dtype": activation_dtype}
