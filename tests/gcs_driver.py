"""The runs of tests/test_gcs.py, inside a network namespace that has only loopback.

  unshare -n python tests/gcs_driver.py OUT_DIR      (as root; tests/test_gcs.py starts it)

Cloud clients without credentials may look for the cloud metadata server or Google's
endpoints; no such request may leave this machine. This script refuses to run unless its
network namespace holds nothing but loopback, brings loopback up, starts the GCS emulator
(PyPI gcp-storage-emulator) on 127.0.0.1, points every client at it, runs the CLIs on
gs://BUCKET/... and writes what it saw to OUT_DIR/results.json for the test to check.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from xla_flags import cli_env  # pylint: disable=wrong-import-position
from tests import cli  # pylint: disable=wrong-import-position

BUCKET = "research-test"
MISSING_BUCKET = "research-test-missing"
STEPS = 12
# A gs:// workdir's lease lasts this long unrenewed here (60 s by default): long enough that a
# command started right after a SIGKILL still finds it held, short enough to wait out.
LEASE_SECONDS = 20
CONFIG = "configs/gpt_shakespeare_char.py"
# tests/test_train.py's SHRINK: the same code path, seconds instead of minutes.
SHRINK = {"model.num_layers": 1, "model.num_decoder_layers": 1, "model.embed_dim": 32,
          "model.mlp_dim": 64, "model.num_heads": 2, "model.max_len": 32, "data.seq_len": 32,
          "train.log_every": 1, "train.eval_batches": 2, "train.eval_every": 0,
          "train.checkpoint_every": 2, "optimizer.decay_steps": 8, "data.batch_size": 8,
          "train.steps": STEPS,
          # GPT-2's choices, which research.convert --to_hf can write
          "model.position": "learned", "model.norm": "layernorm", "model.mlp_activation": "gelu",
          "model.use_bias": True}
TRAIN = ["-m", "research.train", f"--config={CONFIG}",
         *[f"--config.{k}={v}" for k, v in SHRINK.items()]]


def isolate() -> None:
  """Stops unless this namespace has no network interface but loopback; brings loopback up."""
  interfaces = sorted(name for _, name in socket.if_nameindex())  # this namespace's, not sysfs
  if interfaces != ["lo"]:
    raise SystemExit(f"refusing to run: network interfaces {interfaces} besides loopback; run "
                     "under `unshare -n`")
  ip = shutil.which("ip") or "/usr/sbin/ip"
  subprocess.run([ip, "link", "set", "lo", "up"], check=True)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def emulator_env(port: int) -> dict[str, str]:
  """Every client pointed at the emulator, and told not to look for credentials elsewhere."""
  url = f"http://127.0.0.1:{port}"
  env = cli_env(1)
  for key in ("GOOGLE_APPLICATION_CREDENTIALS", "RESEARCH_TRACEBACK"):
    env.pop(key, None)
  env.update({
      "STORAGE_EMULATOR_HOST": url,  # gcsfs (what epath uses), google-cloud-storage
      "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore's gcs driver: orbax's arrays
      "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,  # google-cloud-cpp inside array_record (TFDS)
      "FSSPEC_GCS_TOKEN": "anon",  # gcsfs: no credential lookup at all
      # gcsfs >= 2026.3 asks the storage-control gRPC API for each bucket's layout first;
      # the emulator does not serve it (each call would wait out a 60 s timeout).
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
      "NO_GCE_CHECK": "true",  # google-auth, gcsfs: do not probe the metadata server
      "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9",
      "GCE_METADATA_ROOT": "127.0.0.1:9",
      "GOOGLE_CLOUD_PROJECT": "research-test",
      "RESEARCH_LEASE_SECONDS": str(LEASE_SECONDS),
      "CLOUDSDK_CONFIG": "/nonexistent-gcloud-config",  # no gcloud credentials of this machine
      "PYTHONFAULTHANDLER": "1",  # a CLI stopped with SIGABRT prints every thread's stack
  })
  return env


def serve_emulator(port: int) -> None:
  """gcp-storage-emulator on 127.0.0.1:port, with one addition: object downloads carry the
  x-goog-generation and x-goog-metageneration headers, as real GCS's do. tensorstore's gcs
  driver (which writes and reads orbax's arrays) takes an object's generation from that header
  and fails without it ("Malformed StorageGeneration") as soon as it reads an object back."""
  from http import HTTPStatus  # pylint: disable=import-outside-toplevel
  from gcp_storage_emulator import server  # pylint: disable=import-outside-toplevel
  from gcp_storage_emulator.__main__ import main as emulator_main  # pylint: disable=import-outside-toplevel
  from gcp_storage_emulator.handlers import objects  # pylint: disable=import-outside-toplevel

  original = objects.download

  def download(request, response, storage, *args, **kwargs):
    original(request, response, storage, *args, **kwargs)
    if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj["metageneration"])

  objects.download = download  # what objects.get calls for ?alt=media
  replaced = {original: download}
  # gcp-storage-emulator 2026.7.19 ignores ifGenerationMatch (no handler reads it): uploads and
  # deletes conditioned on an object's generation get GCS's answer here, 412 when it differs
  # (0: the object must not exist), checked and written under one lock.
  from gcp_storage_emulator.exceptions import NotFound  # pylint: disable=import-outside-toplevel
  import threading  # pylint: disable=import-outside-toplevel
  precondition_lock = threading.Lock()

  def conditional(handler):
    def checked(request, response, storage, *args, **kwargs):
      match = request.query.get("ifGenerationMatch")
      if not match:
        return handler(request, response, storage, *args, **kwargs)
      name = (request.query["name"][0] if "name" in request.query
              else request.params["object_id"])
      with precondition_lock:
        try:
          current = str(storage.get_file_obj(request.params["bucket_name"], name)["generation"])
        except NotFound:
          current = "0"
        if current != match[0]:
          response.status = HTTPStatus.PRECONDITION_FAILED
          response.json({"error": {"code": 412, "message": "At least one of the "
                                   "pre-conditions you specified did not hold."}})
          return None
        return handler(request, response, storage, *args, **kwargs)
    return checked

  for name in ("insert", "delete"):
    handler = getattr(objects, name)
    replaced[handler] = conditional(handler)
    setattr(objects, name, replaced[handler])
  for _, handlers in server.HANDLERS:
    for method, handler in list(handlers.items()):
      if handler in replaced:
        handlers[method] = replaced[handler]
  sys.exit(emulator_main(["start", "--host=127.0.0.1", f"--port={port}",
                          f"--default-bucket={BUCKET}", "--in-memory", "--quiet"]))


def start_emulator(port: int, env: dict, log: pathlib.Path) -> subprocess.Popen:
  # Its output goes to a file: a pipe nobody reads would fill and stop the server mid-request.
  with open(log, "w", encoding="utf-8") as log_file:
    proc = subprocess.Popen([sys.executable, __file__, "--emulator", str(port)], env=env,
                            stdout=log_file, stderr=subprocess.STDOUT)
  deadline = time.time() + 60
  while time.time() < deadline:
    if proc.poll() is not None:
      raise SystemExit(f"the GCS emulator exited: {log.read_text()[-2000:]}")
    try:
      with socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return proc
    except OSError:
      time.sleep(0.1)
  raise SystemExit("the GCS emulator did not start within 60 s")


def start(args: list[str], env: dict) -> cli.Process:
  """`python -m MODULE ...` (args: ["-m", MODULE, ...]) through tests/cli.py."""
  return cli.start(args[1], args[2:], env=env)


def run(args: list[str], env: dict, timeout: float = 240) -> dict:
  """A CLI's exit status and output; one that hangs is stopped with SIGABRT, which makes
  Python print every thread's stack (PYTHONFAULTHANDLER) into the stderr returned."""
  proc = start(args, env)
  try:
    proc.wait(timeout)
    stderr = proc.stderr
  except subprocess.TimeoutExpired:
    proc.send_signal(signal.SIGABRT)
    proc.wait()
    stderr = f"timed out after {timeout} s; stacks:\n{proc.stderr[-20000:]}"
  return {"returncode": proc.returncode, "stdout": proc.stdout, "stderr": stderr[-20000:]}


def committed_steps(fs, workdir: str) -> list[int]:
  """The complete checkpoints: on GCS orbax marks a finished step with commit_success.txt."""
  fs.invalidate_cache()
  try:
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(f"{workdir}/checkpoints")]
  except FileNotFoundError:
    return []
  return sorted(int(n) for n in names if n.isdigit() and
                fs.exists(f"{workdir}/checkpoints/{n}/commit_success.txt"))


def train_killed_after_first_checkpoint(workdir: str, env: dict, fs,
                                        log: pathlib.Path) -> dict:
  """research.train on gs://, SIGKILLed as soon as its first checkpoint is complete."""
  proc = start([*TRAIN, f"--workdir={workdir}", f"--config.data.data_dir=gs://{BUCKET}/tfds"],
               env)
  deadline = time.time() + 240
  while not committed_steps(fs, workdir.removeprefix("gs://")):
    if proc.poll() is not None or time.time() > deadline:
      proc.kill()
      proc.wait()
      log.write_text(proc.stderr)
      return {"killed": False, "stderr": proc.stderr[-4000:]}
    time.sleep(0.1)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  log.write_text(proc.stderr)
  steps = committed_steps(fs, workdir.removeprefix("gs://"))
  return {"killed": proc.returncode == -signal.SIGKILL, "steps_at_kill": steps, "pid": proc.pid}


def wait_for_lease_to_expire(workdir: str) -> float:
  """Sleeps until the lease of `workdir` has gone unrenewed for LEASE_SECONDS; returns the
  seconds waited."""
  from research import lease  # pylint: disable=import-outside-toplevel
  store, started = lease.GcsStore(workdir), time.time()
  while (current := store.read(lease.LEASE_FILE)) is not None:
    left = current[2] + LEASE_SECONDS + 0.5 - time.time()
    if left <= 0:
      break
    time.sleep(left)
  return time.time() - started


def take_lease(workdir: str) -> str:
  """What taking the lease of `workdir` says now ("taken" when it is free)."""
  from research import lease  # pylint: disable=import-outside-toplevel
  from research.config import UserError  # pylint: disable=import-outside-toplevel
  taker = lease.Lease(lease.GcsStore(workdir), workdir, "a test", LEASE_SECONDS)
  try:
    taker.acquire()
  except UserError as e:
    return str(e)
  taker.release()
  return "taken"


def two_runs_on_one_workdir(env: dict, fs, log: pathlib.Path) -> dict:
  """A second research.train on a gs:// workdir that a run is training: refused in one line,
  the lease still the holder's. Then the lease is taken over (as a run would that found it
  expired): the holder stops at its next step without writing a checkpoint."""
  from research import lease  # pylint: disable=import-outside-toplevel
  workdir = f"gs://{BUCKET}/leased"
  args = [*TRAIN, f"--workdir={workdir}", "--config.train.checkpoint_every=100000"]
  holder = start([*args, "--config.train.steps=100000"], env)
  out: dict = {}
  deadline = time.time() + 240
  while not fs.exists(f"{BUCKET}/leased/metrics.jsonl"):  # training: the lease is held
    if holder.poll() is not None or time.time() > deadline:
      holder.kill()
      holder.wait()
      log.write_text(holder.stderr)
      return {"started": False, "stderr": holder.stderr[-4000:]}
    time.sleep(0.2)
    fs.invalidate_cache()
  out["second"] = run([*args, "--config.train.steps=2"], env)
  store = lease.GcsStore(workdir)
  data, generation, _ = store.read(lease.LEASE_FILE)
  out["holder_in_lease"] = json.loads(data)["pid"] == holder.pid
  refused = {}
  for name, match in (("create", 0), ("stale", generation - 1)):
    try:
      store.write(lease.LEASE_FILE, b"{}", match)
      refused[name] = False
    except lease.PreconditionFailed:
      refused[name] = True
  out["preconditions_refused"] = refused
  thief = {"command": "research.train", "pid": 4242, "host": "elsewhere", "since": time.time(),
           "seconds": LEASE_SECONDS, "token": "thief"}
  for _ in range(10):  # the holder may renew between the read and the write
    _, generation, _ = store.read(lease.LEASE_FILE)
    try:
      store.write(lease.LEASE_FILE, json.dumps(thief).encode(), generation)
      break
    except lease.PreconditionFailed:
      continue
  try:
    holder.wait(timeout=120)
  except subprocess.TimeoutExpired:
    holder.kill()
    holder.wait()
  log.write_text(holder.stderr)
  out["holder"] = {"returncode": holder.returncode, "stderr": holder.stderr[-4000:]}
  out["lease_after"] = json.loads(store.read(lease.LEASE_FILE)[0])
  out["checkpoints_after"] = committed_steps(fs, f"{BUCKET}/leased")
  store.delete(lease.LEASE_FILE, store.read(lease.LEASE_FILE)[1])
  return out


def export_then_import(workdir: str, env: dict) -> dict:
  """research.convert --to_hf=gs://..., then --from_hf= that folder into a new gs:// workdir."""
  exported = run(["-m", "research.convert", f"--workdir={workdir}",
                  f"--to_hf=gs://{BUCKET}/hf"], env)
  if exported["returncode"]:
    return exported
  imported = run(["-m", "research.convert", f"--from_hf=gs://{BUCKET}/hf",
                  f"--workdir=gs://{BUCKET}/imported"], env)
  return {**exported, "imported": imported}


def bucket_errors() -> dict[str, str]:
  """paths.check_bucket's message when gcsfs is missing and when access is refused (which the
  emulator, having no permissions, cannot refuse: its listing call is replaced here)."""
  import fsspec  # pylint: disable=import-outside-toplevel
  from research import paths  # pylint: disable=import-outside-toplevel
  from research.config import UserError  # pylint: disable=import-outside-toplevel

  class Refusing:
    def ls(self, path, **kwargs):
      raise OSError(f"Forbidden: b/{path}/o\nanonymous caller does not have storage.objects.list")

  def missing_gcsfs(protocol, **kwargs):
    raise ImportError("Install gcsfs to access Google Storage")

  messages, real = {}, fsspec.filesystem
  for name, fake in (("refused", lambda protocol, **kwargs: Refusing()),
                     ("no_gcsfs", missing_gcsfs)):
    fsspec.filesystem = fake
    try:
      paths.check_bucket(f"gs://{BUCKET}/run")
      messages[name] = "no error"
    except UserError as e:
      messages[name] = str(e)
    finally:
      fsspec.filesystem = real
  return messages


def losses(text: str) -> dict[str, float]:
  out = {}
  for line in text.splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if "train/loss" in record:
      out[str(record["step"])] = record["train/loss"]
  return out


def params_digest(workdir: str) -> str:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from research import train  # pylint: disable=import-outside-toplevel
  _, _, params = train.restore_params(workdir)
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]:
    digest.update(jax.tree_util.keystr(path).encode() + np.asarray(leaf).tobytes())
  return digest.hexdigest()


def text_files_on_gcs(fs, local_data_dir: str) -> dict:
  """data.files as a gs:// glob: the documents read back in order."""
  from research.config import DataConfig  # pylint: disable=import-outside-toplevel
  from research.data import corpora  # pylint: disable=import-outside-toplevel
  docs = [f"document {i}: " + "to be or not to be " * (i + 1) for i in range(4)]
  for part in range(2):  # two documents per file
    fs.pipe(f"{BUCKET}/corpus/part{part}.jsonl",
            "".join(json.dumps({"text": d}) + "\n" for d in docs[2 * part:2 * part + 2]).encode())
  cfg = DataConfig(dataset="text_files", files=f"gs://{BUCKET}/corpus/*.jsonl",
                   validation_fraction=0.25, data_dir=local_data_dir)
  return {"files": corpora.resolve_text_files(cfg.files),
          "train": list(corpora.load_texts(cfg, "train")), "expected_train": docs[:3],
          "validation": list(corpora.load_texts(cfg, "validation"))}


def main(out_dir: str) -> None:
  isolate()
  out = pathlib.Path(out_dir)
  port = free_port()
  env = emulator_env(port)
  # This process's environment is the CLIs' (tests/cli.py forks them only then), but XLA_FLAGS.
  os.environ.update({k: v for k, v in env.items() if k != "XLA_FLAGS"})
  for key in set(os.environ) - set(env):
    del os.environ[key]
  emulator = start_emulator(port, env, out / "emulator.log")
  import gcsfs  # pylint: disable=import-outside-toplevel
  fs = gcsfs.GCSFileSystem(token="anon", use_listings_cache=False)
  run_dir, local_dir = f"gs://{BUCKET}/run", str(out / "straight")
  results = {}
  started = time.time()
  try:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
      # The uninterrupted reference (local), the killed run (gs://) and a missing bucket at once.
      straight = pool.submit(run, [*TRAIN, f"--workdir={local_dir}"], env)
      missing = pool.submit(run, [*TRAIN, f"--workdir=gs://{MISSING_BUCKET}/run"], env)
      leased = pool.submit(two_runs_on_one_workdir, env, fs, out / "leased.log")
      results["killed"] = train_killed_after_first_checkpoint(run_dir, env, fs,
                                                              out / "killed.log")
      resume = [*TRAIN, f"--workdir={run_dir}", f"--config.data.data_dir=gs://{BUCKET}/tfds"]
      # The killed run's lease has not expired yet: taking it is refused, naming the killed
      # run (the CLI's line is checked in two_runs_on_one_workdir); once it has gone unrenewed
      # for its duration, the same command takes it over.
      results["too_soon"] = take_lease(run_dir)
      results["lease_waited"] = wait_for_lease_to_expire(run_dir)
      results["resumed"] = run(resume, env)
      results["straight"] = straight.result()
      results["missing_bucket"] = missing.result()
      results["missing_bucket"]["buckets_after"] = sorted(
          b.rstrip("/") for b in fs.ls("", refresh=True))
      readers = {
          "generate": pool.submit(run, ["-m", "research.generate", f"--workdir={run_dir}",
                                        "--prompt=ROMEO:", "--max_new_tokens=8",
                                        "--temperature=0"], env),
          "evaluate": pool.submit(run, ["-m", "research.evaluate", f"--workdir={run_dir}"], env),
          "convert": pool.submit(export_then_import, run_dir, env),
          # fine-tuning from a gs:// workdir into another (its tokenizer copied across)
          "init_from": pool.submit(run, [*TRAIN, f"--workdir=gs://{BUCKET}/finetuned",
                                         f"--config.init_from={run_dir}",
                                         "--config.train.steps=2"], env),
      }
      results["text_files"] = text_files_on_gcs(fs, str(out / "tfds"))
      results["bucket_errors"] = bucket_errors()
      results["params"] = {"gcs": params_digest(run_dir), "local": params_digest(local_dir)}
      for name, future in readers.items():
        results[name] = future.result()
      results["leased"] = leased.result()
    results["losses"] = {"gcs": losses(fs.cat(f"{BUCKET}/run/metrics.jsonl").decode()),
                         "local": losses((out / "straight" / "metrics.jsonl").read_text())}
    results["eval_json"] = json.loads(fs.cat(f"{BUCKET}/run/eval.json"))
    results["objects"] = sorted(fs.find(BUCKET))
  finally:
    emulator.terminate()
    emulator.wait()
  results["seconds"] = time.time() - started
  (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
  if sys.argv[1] == "--emulator":
    serve_emulator(int(sys.argv[2]))
  else:
    main(sys.argv[1])
