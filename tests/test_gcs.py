"""Workdirs and data on Google Cloud Storage, against the GCS emulator, with no network.

tests/gcs_driver.py runs inside `unshare -n` (a network namespace holding only loopback, so no
request can leave the machine whatever a cloud client tries), starts PyPI gcp-storage-emulator on
127.0.0.1 and runs the CLIs on gs://research-test/...: a training run SIGKILLed after its first
checkpoint and resumed with the same command (data.data_dir on gs:// too), research.generate,
research.evaluate, research.convert --to_hf and --from_hf and a fine-tuning run
(config.init_from) from that workdir, a data.files glob on gs://, a training run on a
bucket that does not exist, and two runs on one workdir (the second refused by the first's
lease; the first stopped when its lease is taken over). This test checks what it reports.

The emulator (2026.7.19) sends no x-goog-generation header with object downloads, which
tensorstore (orbax's arrays) needs to read anything back, and ignores ifGenerationMatch, which
workdir leases rely on (research/lease.py); the driver's launcher adds both as GCS documents
them (gcs_driver.serve_emulator). Everything else is the clients as they are.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from research.paths import REPO_ROOT
from tests import gcs_driver


def namespace_command() -> list[str]:
  """`unshare -n` as root (CI); otherwise inside a user namespace, where the kernel allows one."""
  unshare = shutil.which("unshare") or "/usr/bin/unshare"
  return [unshare, "-n"] if os.geteuid() == 0 else [unshare, "-r", "-n"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  # Missing packages fail the test rather than skip it: gs:// support is part of the project.
  for package in ("gcsfs", "gcp_storage_emulator"):
    assert importlib.util.find_spec(package), (
        f"{package} is not installed; pip install -r requirements.txt")
  out = tmp_path_factory.mktemp("gcs")
  driver = [sys.executable, str(REPO_ROOT / "tests" / "gcs_driver.py"), str(out)]
  proc = subprocess.run(namespace_command() + driver, cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, f"driver failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
  return json.loads((out / "results.json").read_text())


def test_sigkilled_training_on_gcs_resumes_bit_identical(results):
  killed = results["killed"]
  assert killed["killed"], killed
  assert killed["steps_at_kill"] and max(killed["steps_at_kill"]) < gcs_driver.STEPS, killed
  for run in ("resumed", "straight"):
    assert results[run]["returncode"] == 0, results[run]["stderr"]
  assert "resumed from gs://research-test/run/checkpoints/" in results["resumed"]["stderr"]
  # The killed run's lease held the workdir until it expired; then the resume took it over.
  assert results["too_soon"].startswith(
      f"workdir gs://{gcs_driver.BUCKET}/run is in use by research.train (pid {killed['pid']} "), \
      results["too_soon"]
  assert results["lease_waited"] < gcs_driver.LEASE_SECONDS + 5
  assert (f"note: workdir gs://{gcs_driver.BUCKET}/run was held by research.train (pid "
          f"{killed['pid']} ") in results["resumed"]["stderr"]
  assert "this run takes it over" in results["resumed"]["stderr"]
  assert results["params"]["gcs"] == results["params"]["local"]
  losses = results["losses"]
  assert sorted(map(int, losses["gcs"])) == list(range(1, gcs_driver.STEPS + 1))
  assert losses["gcs"] == losses["local"]


def test_a_second_run_on_a_gcs_workdir_is_refused_and_a_taken_lease_stops_the_first(results):
  leased = results["leased"]
  assert leased.get("started", True), leased
  second = leased["second"]
  errors = [l for l in second["stderr"].splitlines() if l.startswith("error: ")]
  assert second["returncode"] == 2 and len(errors) == 1, second["stderr"][-3000:]
  assert "Traceback" not in second["stderr"], second["stderr"][-3000:]
  assert errors[0].startswith(f"error: workdir gs://{gcs_driver.BUCKET}/leased is in use by "
                              "research.train (pid "), errors[0]
  assert "wait for it to finish or stop it, or use another --workdir" in errors[0]
  assert leased["holder_in_lease"]  # the refused run left the holder's lease alone
  # The emulator answers preconditions as GCS does (the driver adds them; see its docstring).
  assert leased["preconditions_refused"] == {"create": True, "stale": True}
  holder = leased["holder"]
  errors = [l for l in holder["stderr"].splitlines() if l.startswith("error: ")]
  assert holder["returncode"] == 2 and len(errors) == 1, holder["stderr"][-3000:]
  assert "Traceback" not in holder["stderr"], holder["stderr"][-3000:]
  assert errors[0].startswith(f"error: workdir gs://{gcs_driver.BUCKET}/leased was taken over "
                              "by research.train (pid 4242 on host elsewhere"), errors[0]
  assert "this run stopped without writing more" in errors[0]
  assert leased["lease_after"]["token"] == "thief"  # the stopped run did not delete it
  assert leased["checkpoints_after"] == []


def test_gcs_workdir_holds_the_whole_run(results):
  objects = set(results["objects"])
  run = f"{gcs_driver.BUCKET}/run"
  for name in ("config.json", "metrics.jsonl", "tokenizer/manifest.json", "eval.json",
               f"checkpoints/{gcs_driver.STEPS}/commit_success.txt"):
    assert f"{run}/{name}" in objects, name
  assert f"{run}/.lease" not in objects  # deleted by the run that held it last
  assert any(o.startswith(f"{run}/tensorboard/events.out.tfevents.") for o in objects)
  # data.data_dir=gs://: prepared locally, copied up (array_record writes local files only)
  assert any(o.startswith(f"{gcs_driver.BUCKET}/tfds/tiny_shakespeare_chunks/1.0.0/") and
             o.endswith("dataset_info.json") for o in objects)
  # Nothing was written under the current directory as a folder named 'gs:'.
  assert not (REPO_ROOT / "gs:").exists()


def test_generate_evaluate_and_convert_read_a_gcs_workdir(results):
  for name in ("generate", "evaluate", "convert"):
    assert results[name]["returncode"] == 0, results[name]["stderr"]
  assert results["generate"]["stdout"].startswith("ROMEO:")
  assert results["eval_json"]["step"] == gcs_driver.STEPS
  assert results["eval_json"]["tokens"] == 111_539  # the whole validation split
  objects = set(results["objects"])
  bucket = gcs_driver.BUCKET
  assert {f"{bucket}/hf/model.safetensors", f"{bucket}/hf/config.json"} <= objects
  imported = results["convert"]["imported"]  # --from_hf=gs://.../hf into a gs:// workdir
  assert imported["returncode"] == 0, imported["stderr"]
  assert {f"{bucket}/imported/config.json", f"{bucket}/imported/checkpoints/0/commit_success.txt",
          f"{bucket}/imported/hf_import/config.json"} <= objects


def test_fine_tuning_from_a_gcs_workdir(results):
  finetuned = results["init_from"]
  assert finetuned["returncode"] == 0, finetuned["stderr"]
  assert f"initialised from gs://{gcs_driver.BUCKET}/run:" in finetuned["stderr"]
  objects = set(results["objects"])
  assert {f"{gcs_driver.BUCKET}/finetuned/tokenizer/manifest.json",
          f"{gcs_driver.BUCKET}/finetuned/checkpoints/2/commit_success.txt"} <= objects


def test_text_files_glob_on_gcs(results):
  found = results["text_files"]
  assert found["files"] == [f"gs://{gcs_driver.BUCKET}/corpus/part0.jsonl",
                            f"gs://{gcs_driver.BUCKET}/corpus/part1.jsonl"]
  assert found["train"] == found["expected_train"] and len(found["validation"]) == 1


def test_a_missing_bucket_is_one_error_line_and_writes_nothing(results):
  missing = results["missing_bucket"]
  assert missing["returncode"] == 2, missing["stderr"]
  lines = missing["stderr"].strip().splitlines()
  assert lines == [f"error: bucket gs://{gcs_driver.MISSING_BUCKET} does not exist (for "
                   f"gs://{gcs_driver.MISSING_BUCKET}/run); create it (gcloud storage buckets "
                   f"create gs://{gcs_driver.MISSING_BUCKET}) or fix the name"], lines
  assert gcs_driver.MISSING_BUCKET not in missing["buckets_after"]


def test_refused_access_and_a_missing_gcsfs_are_one_line_each(results):
  errors = results["bucket_errors"]
  assert errors["refused"].startswith(f"bucket gs://{gcs_driver.BUCKET} refuses access or cannot "
                                      f"be reached (for gs://{gcs_driver.BUCKET}/run): Forbidden")
  assert "\n" not in errors["refused"] and "credentials" in errors["refused"]
  assert errors["no_gcsfs"].startswith(f"gs://{gcs_driver.BUCKET}/run: gs:// paths need gcsfs")
