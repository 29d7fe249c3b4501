"""The default GPT (configs/gpt_shakespeare_char.py) with bfloat16 matmuls, seeds 0, 1, 2 in one
program (research.multiseed): the validation losses to hold against the float32 seed spread.

  python benchmarks/bf16_seeds.py [--out=/tmp/bf16seeds]

Figures: benchmarks/README.md, "bfloat16 matmuls on AVX-512 bf16".
"""
import dataclasses, json, pathlib, sys, time
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from research import multiseed
from research.config import ExperimentConfig
import importlib.util
OUT = sys.argv[1].removeprefix("--out=") if len(sys.argv) > 1 else "/tmp/bf16seeds"
spec = importlib.util.spec_from_file_location("c", str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "gpt_shakespeare_char.py"))
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
cfg = ExperimentConfig.from_config_dict(m.get_config())
cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, matmul_dtype="bfloat16"))
start = time.time()
res = multiseed.train_and_evaluate(cfg, seeds=[0, 1, 2], workdirs=[f"{OUT}/s{i}" for i in range(3)])
print(json.dumps({"seconds": time.time() - start, "results": str(res)}))
