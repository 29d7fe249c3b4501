"""What a compiled XLA program costs, read from its optimized HLO text: HBM traffic and
collectives per device, each loop counted as often as it runs; and XLA's FLOP count of a
lowered program before partitioning.

XLA's own cost analysis of a partitioned program counts the body of a loop once: a scan over
layers, and the windowed einsums (loops of collective permutes) it makes for FSDP, so its
figures for such programs can be several times too low. research.aot reads these instead.
"""

from __future__ import annotations

import dataclasses
import math
import re


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
                "f8e4m3fn": 1, "f8e5m2": 1, "s4": 1, "u4": 1}
_ARRAY = re.compile(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\](\{[^}]*\})?")
# A layout's memory space: S(1) is the TPU's on-chip alternate memory (VMEM), where XLA's
# memory-space assignment prefetches operands; S(2), S(4), S(6) hold scalars and semaphores.
# Only buffers in the default space (no S(n)) live in HBM.
_MEMORY_SPACE = re.compile(r"S\((\d+)\)")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?(\S+)\s+\((.*)\)\s+->\s+.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%(\S+)\s+=\s+(.*?)\s+([a-z][\w\-]*)\((.*?)\)(.*)$")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
               "ragged-all-to-all")
# Instructions that move no HBM data of their own.
_NO_TRAFFIC = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
               "partition-id", "replica-id", "iota", "opt-barrier"}


def _array_bytes(shape_text: str, hbm_only: bool = False) -> list[int]:
  """Bytes of each array of an HLO shape; hbm_only: leave out those in another memory space."""
  return [_DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
          for dtype, dims, layout in _ARRAY.findall(shape_text)
          if dtype in _DTYPE_BYTES and not (hbm_only and _in_other_memory(layout))]


def _in_other_memory(layout: str) -> bool:
  space = _MEMORY_SPACE.search(layout)
  return bool(space) and space.group(1) != "0"


def _hbm_bytes(shape_text: str) -> int:
  return sum(_array_bytes(shape_text, hbm_only=True))


def _group_size(line: str, num_devices: int) -> int:
  """Devices per replica group of a collective's HLO line."""
  iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", line)
  if iota:
    return int(iota.group(2))
  listed = re.search(r"replica_groups=\{\{([\d,]+)\}", line)
  if listed:
    return len(listed.group(1).split(","))
  mesh = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
  if mesh:
    sizes = dict(re.findall(r"'?(\w+)'?=(\d+)", mesh.group(1)))
    axes = re.findall(r"'?(\w+)'?", mesh.group(2))
    return math.prod(int(sizes[a]) for a in axes if a in sizes) or num_devices
  return num_devices


def _collective_bytes(op: str, start: bool, shape: str) -> float:
  arrays = _array_bytes(shape)
  if start and op == "all-gather":  # (operands..., results...)
    return sum(arrays[len(arrays) // 2:])
  if start and op == "collective-permute":  # (operand, result, contexts)
    return arrays[0] if arrays else 0
  return sum(arrays)


def _wire_bytes(op: str, size: float, n: int) -> float:
  """Bytes a ring sends per device: all-reduce 2(n-1)/n of the data, all-gather and all-to-all
  (n-1)/n of the result, reduce-scatter (n-1)x its result, a permute its whole buffer."""
  return {"all-reduce": 2 * (n - 1) / n * size, "all-gather": (n - 1) / n * size,
          "reduce-scatter": (n - 1) * size, "collective-permute": size}.get(op, (n - 1) / n * size)


@dataclasses.dataclass
class Costs:
  """Per-device costs of one call of a compiled program, read from its optimized HLO: HBM bytes
  (each top-level instruction's operands and results that live in HBM, not in the on-chip
  memory the compiler assigns some of them; a fusion's insides stay on chip) and the
  collectives. Loops count as often as they run (known trip counts: scanned layers, XLA's
  windowed einsums), which XLA's own cost analysis does not do."""

  flops: float  # from the program before partitioning (global_flops / devices)
  hbm_bytes: float
  collectives: dict[str, dict[str, float]]

  @classmethod
  def of(cls, hlo_text: str, flops_per_device: float, num_devices: int) -> "Costs":
    computations, entry = _parse_hlo(hlo_text)
    memo: dict[str, tuple[float, dict]] = {}

    def visit(name: str) -> tuple[float, dict]:
      if name in memo:
        return memo[name]
      comp = computations[name]
      sizes = dict(comp["params"])
      hbm, colls = 0.0, {}

      def add(sub_hbm, sub_colls, times=1):
        nonlocal hbm
        hbm += times * sub_hbm
        for kind, v in sub_colls.items():
          entry_ = colls.setdefault(kind, {"count": 0, "bytes": 0.0, "wire_bytes": 0.0})
          for field in entry_:
            entry_[field] += times * v[field]

      for iname, shape, op, operands, attrs in comp["instructions"]:
        sizes[iname] = _hbm_bytes(shape)
        callees = re.findall(r"(?:body|calls|to_apply|branch_computations=\{)=?%([\w.\-]+)", attrs)
        if op == "while":
          trips = _trip_count(attrs, computations)
          for callee in callees:
            add(*visit(callee), times=trips)
          continue
        if op in ("call", "conditional", "async-start"):
          for callee in callees:
            add(*visit(callee))
          continue
        if op == "fusion":  # collectives may sit inside (TPU's async collective fusions)
          for callee in callees:
            add(0.0, visit(callee)[1])
        base = op[:-len("-start")] if op.endswith("-start") else op
        if base in COLLECTIVES:
          size = _collective_bytes(base, op.endswith("-start"), shape)
          n = max(_group_size(attrs, num_devices), 1)
          add(0.0, {base: {"count": 1, "bytes": size, "wire_bytes": _wire_bytes(base, size, n)}})
        if op in _NO_TRAFFIC or op.endswith("-done"):
          continue
        names = re.findall(r"%([\w.\-]+)", operands)
        if op == "fusion" and callees and callees[0] in computations:
          hbm += _fusion_traffic(computations[callees[0]], [sizes.get(o, 0) for o in names])
        else:
          hbm += _instruction_traffic(op, shape, [sizes.get(o, 0) for o in names])
      memo[name] = (hbm, colls)
      return memo[name]

    hbm, colls = visit(entry)
    for v in colls.values():
      v["count"] = int(round(v["count"]))
    return cls(flops_per_device, hbm, colls)


def _instruction_traffic(op: str, shape: str, operands: list[int]) -> int:
  """HBM bytes an instruction reads and writes (arrays in on-chip memory count nothing). A slice
  reads only the slice it returns; a dynamic update slice works in place, reading and writing
  only the update (a scan over layers reads and writes one layer of its stacked buffers per
  iteration, not all of them). An asynchronous copy, slice or permute returns a tuple that
  holds its operand again (source, destination, context): each buffer counts once."""
  result = _hbm_bytes(shape)
  if op in ("slice", "dynamic-slice", "slice-start"):
    arrays = _ARRAY.findall(shape)
    # slice-start returns ((source), slice, context)
    dtype, dims, layout = arrays[1] if op == "slice-start" else arrays[0]
    size = _DTYPE_BYTES.get(dtype, 0) * math.prod(int(d) for d in dims.split(",") if d)
    read = size if operands and operands[0] else 0  # nothing from on-chip memory
    return read + (0 if _in_other_memory(layout) else size)
  if op == "dynamic-update-slice" and len(operands) > 1:
    return 2 * operands[1]
  if op in ("copy-start", "collective-permute-start", "all-gather-start"):
    return result
  return result + sum(operands)


def _fusion_traffic(fused: dict, operands: list[int]) -> int:
  """A fusion's HBM bytes: its operands and result, except that a parameter read only through
  slices counts the slices, a buffer updated in place counts nothing but the update, a result
  that is a dynamic update slice of a parameter counts the update, and a parameter passed
  through to the result untouched counts nothing."""
  instructions = fused["instructions"]
  sizes = {name: _hbm_bytes(shape) for name, shape, *_ in instructions}
  users: dict[str, list[tuple[str, list[str]]]] = {}
  for name, _, op, args, _ in instructions:
    for position, arg in enumerate(re.findall(r"%([\w.\-]+)", args)):
      users.setdefault(arg, []).append((op, position, name, args))
  root_name = instructions[-1][0] if instructions else ""
  total = 0
  for name, _, op, args, _ in instructions:
    if op != "parameter" or not args.strip().isdigit() or int(args) >= len(operands):
      continue
    uses = users.get(name, [])
    if not operands[int(args)]:
      continue  # in on-chip memory: neither it nor its slices are HBM traffic
    if uses and all(o in ("dynamic-slice", "slice") and pos == 0 for o, pos, *_ in uses):
      total += sum(sizes[user] for _, _, user, _ in uses)
    elif uses and all(user == root_name and o == "tuple" for o, _, user, _ in uses):
      continue  # passed through to the result untouched (an asynchronous fusion's buffers)
    elif uses and all(o == "dynamic-update-slice" and pos == 0 for o, pos, *_ in uses):
      continue  # updated in place: the update is counted with the result
    else:
      total += operands[int(args)]
  root = instructions[-1] if instructions else None
  for name, shape, op, args, _ in ([root] if root else []):
    parts = re.findall(r"%([\w.\-]+)", args) if op == "tuple" else [name]
    for part in parts:
      producer = next((i for i in instructions if i[0] == part), None)
      if producer and producer[2] == "parameter":
        continue  # passed through (see above)
      if producer and producer[2] == "dynamic-update-slice":
        update = re.findall(r"%([\w.\-]+)", producer[3])[1:2]
        if update and sizes.get(part, 0):  # (an update of an on-chip buffer stays on chip)
          total += sizes.get(update[0], 0)
      else:
        total += sizes.get(part, 0)
  return total


def _trip_count(attrs: str, computations: dict[str, dict]) -> int:
  """Iterations of a while loop: XLA's known_trip_count, else the bound N of a condition
  `i < N` with a constant N (what a scan over layers lowers to); 1 when neither is found."""
  known = re.search(r'"known_trip_count":\{"n":"(\d+)"', attrs)
  if known:
    return int(known.group(1))
  condition = re.search(r"condition=%([\w.\-]+)", attrs)
  comp = computations.get(condition.group(1)) if condition else None
  if comp is None:
    return 1
  constants = {name: int(operands) for name, _, op, operands, _ in comp["instructions"]
               if op == "constant" and operands.lstrip("-").isdigit()}
  for _, _, op, operands, rest in comp["instructions"]:
    if op == "compare" and "direction=LT" in rest:
      bound = [constants[o] for o in re.findall(r"%([\w.\-]+)", operands) if o in constants]
      if bound:
        return bound[0]
  return 1


def _parse_hlo(text: str) -> tuple[dict[str, dict], str]:
  """{computation: {params: {name: bytes}, instructions: [(name, shape, op, operands, attrs)]}}
  and the entry computation's name, from an HLO module's text."""
  computations: dict[str, dict] = {}
  entry, current = "", None
  for line in text.splitlines():
    header = _HEADER.match(line)
    if header:
      current = header.group(1)
      params = {name: sum(_array_bytes(shape)) for name, shape in
                re.findall(r"(\S+?):\s*(\([^)]*\)|\S+)", header.group(2))}
      computations[current] = {"params": params, "instructions": []}
      entry = current if line.startswith("ENTRY") else entry
    elif current is not None and line.strip() == "}":
      current = None
    elif current is not None:
      match = _INSTRUCTION.match(line)
      if match:
        computations[current]["instructions"].append(match.groups())
  return computations, entry


def global_flops(lowered) -> float:
  """XLA's FLOP count of a lowered program before it is partitioned (the whole batch on all
  devices; element-wise work included), from the CPU backend's HLO cost analysis: the TPU
  compile-only client does not run one, and after partitioning XLA counts the body of a loop
  (scanned layers, windowed einsums) once."""
  # JAX internals: only where the compiler's cost model is asked
  from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
  from jax._src.lib import _jax  # pylint: disable=import-outside-toplevel
  module = lowered.compiler_ir("hlo").as_hlo_module()
  cost = _jax.hlo_module_cost_analysis(xla_bridge.get_backend("cpu"), module)
  return float(cost.get("flops", 0.0))
