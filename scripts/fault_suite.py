"""The fault suite of issue 15: hostile inputs, checkpoints and metadata, interruptions and resource faults, each run
through the bundle's real entry points, and a table of how each was handled.

    python scripts/fault_suite.py [--out docs/fault_suite.md] [--work_dir DIR] [--seeds 3] [--quick]

Prints a markdown table (fault, cases tried, handled with a named error, crashed, outputs lost) and, with
``--out``, writes it there with the command, the machine and the time it took, and the same as JSON next to it
(``.json``). A case is *handled* when it ends in a one-line error naming the file or setting and what is wrong
(for a batch run: a row of failures.csv, the run going on), or, for a valid but awkward input, when it is processed
with complete outputs; *crashed* when it ends any other way (a traceback, a wrong exit status, a case missing from
both outputs); *outputs lost* counts finished outputs missing or unreadable afterwards (good images of the same
run without their outputs, checkpoints that do not load, rows lost or duplicated) and code that ran from a hostile
file. Exit status 1 when any case crashed or lost outputs.

The cases are built by ``tests/reliability/cases.py`` (shared with the tests in ``tests/reliability/``), runs go
through ``python -m monai.bundle`` (``tests/reliability/bundle_driver.py`` installs simulated faults: an unreadable
file, a full disk, a slow checkpoint write, an allocation failure) and kills through
``tests/reliability/kill_harness.py``. Everything is written under ``--work_dir`` (a temporary folder by default).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from tests.reliability import cases as C  # noqa: E402


@dataclass
class Row:
    group: str
    fault: str
    tried: int = 0
    handled: int = 0
    crashed: int = 0
    lost: int = 0
    how: str = ""
    notes: list[str] = field(default_factory=list)

    def add(self, handled: bool, lost: int = 0, note: str = "") -> None:
        self.tried += 1
        self.handled += bool(handled)
        self.crashed += not handled
        self.lost += lost
        if note and note not in self.notes:
            self.notes.append(note)


ROWS: list[Row] = []


def row(group: str, fault: str, how: str) -> Row:
    for existing in ROWS:
        if existing.group == group and existing.fault == fault:
            return existing
    ROWS.append(Row(group, fault, how=how))
    return ROWS[-1]


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def one_line_ok(result: subprocess.CompletedProcess, *phrases: str) -> tuple[bool, str]:
    line = C.one_line_error(result.stderr)
    ok = result.returncode == 2 and bool(line) and all(p in line for p in phrases)
    return ok, line or (result.stderr.strip().splitlines() or [""])[-1][:200]


# ------------------------------------------------------------------------------------------------ hostile images
def hostile_images(work: Path, seeds: int) -> None:
    log("hostile images through configs/inference.json ...")
    datalist = C.make_phantoms(work / "ph", n_images=3, fractions={"test": 1.0})
    good = [work / "ph" / item["image"] for item in json.loads(datalist.read_text())["test"]]
    built = C.build_image_cases(work / "data" / "cases", good[0], C.IMAGE_CASES + C.variant_image_cases(seeds))
    items = [{"image": str(path)} for _, path in built]
    for i, path in enumerate(good):  # good images spread among the bad ones
        items.insert((i + 1) * len(items) // (len(good) + 1), {"image": str(path)})
    listing = work / "data" / "all.json"
    listing.write_text(json.dumps({"test": items}))
    result = C.run_bundle(C.inference_args(work / "out", datalist=listing),
                          env={"GLAM_FAULT_DENY_READ": C.UNREADABLE_MARK})
    report = C.check_inference(work / "out", built, good)
    run_ok = result.returncode == 0
    for case in report["cases"]:
        how = "inference run over a datalist of all cases: a row of failures.csv naming the file and the problem"
        if case.expect == "ok":
            how = "processed: row in predictions.csv, saliency map and figure"
        r = row("hostile images", case.fault, how)
        note = ""
        if case.fault.startswith("unreadable"):
            note = "we run as root, for whom mode 000 does not stop reads: the denial is simulated (open raises EACCES)"
        if case.fault == "symlink loop":
            note = f"reported as: {case.message.split(': ', 1)[-1]}"
        if case.expect == "either":
            note = f"a valid header with random pixel values: {case.outcome}"
        r.add(case.handled and run_ok, note=note if case.handled else f"{case.name}: {case.outcome} {case.message}")
    lost = len(report["good_lost"]) + len(report["duplicates"])
    row("hostile images", "good images in the same run", "all processed, outputs complete").add(run_ok and not lost, lost)
    if not run_ok:
        log(result.stderr[-3000:])


# ----------------------------------------------------------------------------------- checkpoints and metadata
def hostile_checkpoints(work: Path) -> None:
    import torch

    from glam_bundle.checkpoint import CheckpointError, load_global_module, load_original_checkpoint, load_weights
    from glam_bundle.networks import GLAM
    from tests.reliability.test_hostile_checkpoints import SMALL

    log("hostile checkpoints ...")
    work.mkdir(parents=True, exist_ok=True)
    C.make_phantoms(work / "ph", n_images=1, fractions={"test": 1.0})
    files, marker = C.write_hostile(work)
    good = work / "good.pt"
    torch.save(GLAM(**SMALL).state_dict(), good)
    broken = {
        "truncated": good.read_bytes()[:300],
        "empty": b"",
        "random bytes": os.urandom(4000),
    }
    for name, data in broken.items():
        (work / f"{name.replace(' ', '_')}.pt").write_bytes(data)
    other = work / "other_widths.pt"  # a checkpoint of another network: wrongly shaped keys
    torch.save(GLAM(**{**SMALL, "global_channels": [4, 8, 8, 8, 16]}).state_dict(), other)
    missing = work / "missing_keys.pt"
    state = GLAM(**SMALL).state_dict()
    torch.save({k: v for i, (k, v) in enumerate(state.items()) if i % 2}, missing)

    def code_ran() -> int:
        ran = int(marker.exists())
        marker.unlink(missing_ok=True)
        return ran

    how_cli = "inference --ckpt_path (MONAI CheckpointLoader, weights_only): exit 2, one line `error: --ckpt_path: ...`"
    row("hostile checkpoints", "pickle that runs code (marker file)",
        "refused by inference's --ckpt_path (MONAI CheckpointLoader), the glam_bundle.checkpoint loaders, "
        "scripts/import_original_checkpoint.py and training's resume file last.pt, each with one line naming the "
        "file or setting; the marker never appears")
    for kind, path in files.items():
        result = C.run_bundle(C.inference_args(work / "out", dataset_dir=work / "ph" / "images") +
                              ["--ckpt_path", str(path)])
        ok, line = one_line_ok(result, "--ckpt_path", "refused")
        lost = code_ran()
        row("hostile checkpoints", "pickle that runs code (marker file)", how_cli + "; marker never appears").add(
            ok and not lost, lost, "" if ok else line)
    for name, phrase in (("truncated", "truncated or corrupt"), ("empty", "empty or truncated"),
                         ("random_bytes", "refused")):
        result = C.run_bundle(C.inference_args(work / "out", dataset_dir=work / "ph" / "images") +
                              ["--ckpt_path", str(work / f"{name}.pt")])
        ok, line = one_line_ok(result, "--ckpt_path", phrase)
        row("hostile checkpoints", "truncated, empty or random checkpoint", how_cli).add(ok, note="" if ok else line)
    for path, phrase in ((other, "another shape"), (missing, "missing keys")):
        result = C.run_bundle(C.inference_args(work / "out", dataset_dir=work / "ph" / "images") +
                              ["--ckpt_path", str(path)])
        ok, line = one_line_ok(result, "--ckpt_path", phrase)
        row("hostile checkpoints", "missing or wrongly shaped keys", how_cli + " listing them").add(
            ok, note="" if ok else line)

    how_lib = ("glam_bundle.checkpoint loaders (init_checkpoint, stage 2, export) and "
               "scripts/import_original_checkpoint.py: one-line CheckpointError")
    loaders = {"load_original_checkpoint": load_original_checkpoint,
               "load_weights": lambda p: load_weights(GLAM(**SMALL), p),
               "load_global_module": lambda p: load_global_module(GLAM(**SMALL), p)}
    for name, loader in loaders.items():
        for kind, path in files.items():
            try:
                loader(path)
                ok = False
            except CheckpointError as error:
                ok = "refused" in str(error) and "\n" not in str(error)
            except Exception:  # noqa: BLE001 -- anything else is a crash of this case
                ok = False
            lost = code_ran()
            row("hostile checkpoints", "pickle that runs code (marker file)", how_lib).add(ok and not lost, lost)
    script = REPO_ROOT / "scripts" / "import_original_checkpoint.py"
    for kind, path in files.items():
        result = subprocess.run([sys.executable, str(script), str(path), str(work / "converted.pt")], cwd=REPO_ROOT,
                                capture_output=True, text=True)
        lines = result.stderr.strip().splitlines()
        ok = result.returncode != 0 and len(lines) == 1 and "refused" in lines[0]
        lost = code_ran() + int((work / "converted.pt").exists())
        row("hostile checkpoints", "pickle that runs code (marker file)", how_lib).add(ok and not lost, lost)

    # the resume file of a training stage (last.pt) replaced by the hostile pickle
    C.make_phantoms(work / "tr", n_images=4, fractions={"training": 0.5, "validation": 0.5})
    (work / "train_out").mkdir()
    shutil.copyfile(files["zip"], work / "train_out" / "last.pt")
    result = C.run_bundle(["run", "training", "--config_file", C.TRAIN_CONFIG, "--dataset_dir", str(work / "tr"),
                           "--output_dir", str(work / "train_out"), "--ckpt_dir", str(work / "models"),
                           "--max_epochs", "1", *C.tiny_args(C.TINY_TRAINING)])
    ok, line = one_line_ok(result, "last.pt")
    lost = code_ran()
    row("hostile checkpoints", "pickle that runs code (marker file)",
        how_lib + "; training's resume file last.pt: one-line ResumeError").add(ok and not lost, lost,
                                                                              "" if ok else line)


def hostile_metadata(work: Path) -> None:
    import pickle

    from glam_bundle.data.builders.nyu import restricted_load_pickle
    from glam_bundle.data.errors import BadInputError
    from tests.reliability.test_hostile_checkpoints import CreatesMarker

    log("hostile exam lists and datalists ...")
    work.mkdir(parents=True, exist_ok=True)
    marker = work / "marker_exam_list_code_ran"
    how = "RestrictedUnpickler: `<file>: refused to load posix.system ...`; scripts/build_datalist.py nyu exits 2"
    for protocol in (0, 2, 4, 5):
        path = work / f"exam_list_p{protocol}.pkl"
        path.write_bytes(pickle.dumps([{"horizontal_flip": "NO", "L-CC": [CreatesMarker(marker)]}], protocol=protocol))
        try:
            restricted_load_pickle(path)
            ok = False
        except BadInputError as error:
            ok = str(error).startswith(f"{path}: refused to load ")
        lost = int(marker.exists())
        marker.unlink(missing_ok=True)
        row("hostile metadata", "exam-list pickle that runs code (marker file)", how).add(ok and not lost, lost)
    path, marker = C.hostile_exam_list(work)
    (work / "images").mkdir(exist_ok=True)
    result = subprocess.run([sys.executable, "scripts/build_datalist.py", "nyu", "--exam_list", str(path),
                             "--image_dir", str(work / "images"), "--out", str(work / "nyu.json")], cwd=REPO_ROOT,
                            capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    ok, line = one_line_ok(result, "refused to load")
    lost = int(marker.exists()) + int((work / "nyu.json").exists())
    row("hostile metadata", "exam-list pickle that runs code (marker file)", how).add(ok and not lost, lost,
                                                                                     "" if ok else line)

    image = work / "a.png"
    image.write_bytes(b"")
    for name, (content, phrase) in C.DATALIST_CASES(work, str(image)).items():
        listing = C.write_datalist_case(work, name, content)
        result = C.run_bundle(C.inference_args(work / "out", datalist=listing))
        ok, line = one_line_ok(result, str(listing), phrase)
        row("hostile metadata", "datalist JSON: missing keys, wrong types, not JSON",
            "inference --datalist: exit 2, one line naming the file, the item and the problem").add(
            ok, note="" if ok else f"{name}: {line}")
    row("hostile metadata", "datalist JSON: missing keys, wrong types, not JSON", "").notes.append(
        "paths outside the data root are allowed by design (absolute paths are valid); a file there that is not an "
        "image is a failures.csv row (see hostile images)")


# --------------------------------------------------------------------------------------------------- interruptions
def harness(work: Path, command: list[str], *options: str) -> dict:
    report = work / "logs" / "report.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "tests.reliability.kill_harness", *options, "--report", str(report), "--",
                    *command], cwd=REPO_ROOT, check=True, capture_output=True, text=True,
                   env=dict(os.environ, OMP_NUM_THREADS="1"))
    return json.loads(report.read_text())


EPOCHS = 12  # training's epochs in the kill runs: 4 random kills move it on by at most 3 epochs each


def interruptions(work: Path, seeds: int) -> None:
    import torch

    log("interruptions: training killed at random points ...")
    C.make_phantoms(work / "tr", n_images=6, fractions={"training": 0.5, "validation": 0.5})
    leftovers = []
    for seed in range(seeds):
        for variant, slow_match in enumerate((".last.", "model_global")):
            run = 2 * seed + variant
            run_dir = work / f"train_{run}_{slow_match.strip('.')}"
            out, models = run_dir / "out", run_dir / "models"
            command = ["run", "training", "--config_file", C.TRAIN_CONFIG, "--dataset_dir", str(work / "tr"),
                       "--output_dir", str(out), "--ckpt_dir", str(models), "--max_epochs", str(EPOCHS),
                       "--val_interval", "3", *C.tiny_args(C.TINY_TRAINING)]
            report = harness(run_dir, command, "--seed", str(run), "--kills", "5", "--kill_after_iterations", "4",
                             "--min_delay", "0", "--max_delay", "0.6", "--slow_save_kill", str(1 + run % 4),
                             "--slow_save_match", slow_match, "--reference", str(run_dir / "reference"))
            attempts = report["attempts"]
            temporaries = C.temporary_leftovers(out) + C.temporary_leftovers(models)
            leftovers += temporaries
            loads = {p: e for p, e in (C.load_every_pt(out) | C.load_every_pt(models)).items() if p not in temporaries}
            for path, error in loads.items():
                if error:
                    row("interruptions", "training (configs/train_global.json) killed with SIGKILL", "").notes.append(
                        f"run {run}: {Path(path).name} left unreadable at the end ({error[:90]})")
            def expected_line(before: dict | None) -> str:
                if not before:
                    return ""
                if before.get("completed"):
                    return "stage already complete"
                return f"resuming from {out / 'last.pt'} at epoch {before.get('epoch')}"

            resumed_right = all(a["resume_line"] == expected_line(a["last_before"]) for a in attempts)
            finished = attempts[-1]["status"] == 0 and report["final_last"] == {"epoch": EPOCHS, "completed": True}
            loads_bad = sum(bool(e) for e in loads.values())
            lost = loads_bad
            same = ""
            if report.get("reference_status") == 0:
                final = torch.load(out / "last.pt", weights_only=True)["objects"]["model"]
                ref = torch.load(run_dir / "reference" / "out" / "last.pt", weights_only=True)["objects"]["model"]
                same = "; same weights as an uninterrupted run" if all(torch.equal(final[k], ref[k]) for k in ref) \
                    else "; WEIGHTS DIFFER from an uninterrupted run"
            where = "last.pt" if slow_match == ".last." else "the best model (model_global.pt, MONAI's CheckpointSaver)"
            slow = next(a for a in attempts if a["slow_save"])
            # a checkpoint left unreadable right after a kill counts as lost, even when a restart later rewrote it
            lost += sum(len(a["unreadable_after"]) for a in attempts)
            r = row("interruptions", "training (configs/train_global.json) killed with SIGKILL",
                    "restarted with the same command: resumes from the last complete last.pt, finishes; every "
                    "checkpoint loads (also right after each kill)")
            for attempt in attempts[:-1]:
                if attempt["slow_save"] and not attempt["killed_while_writing"] and attempt["status"] == 0:
                    continue  # no checkpoint of that kind was written in that attempt: no kill, not a case
                r.add(attempt["status"] == -9 and resumed_right and finished, 0)
            r.lost += lost
            for a in attempts:
                if a["unreadable_after"]:
                    r.notes.append(f"run {run}: right after kill {a['attempt'] + 1}"
                                   f"{' (while writing ' + where + ')' if a['slow_save'] else ''}: "
                                   f"{', '.join(a['unreadable_after'])} UNREADABLE (written in place, not atomically)"
                                   f"{'; a restart wrote it again' if not loads_bad else ''}")
            resumed_at = [a["last_before"]["epoch"] if a["last_before"] else 0 for a in attempts[1:]]
            kills = sum(a["status"] == -9 for a in attempts)
            note = (f"run {run} (seed {run}): {kills} kills (after iterations {[a['after_iterations'] for a in attempts[:-1]]} + "
                    f"{[a['delay_s'] for a in attempts[:-1]]} s), one while writing {where} "
                    f"({'landed' if slow['killed_while_writing'] else 'not tried: no such write in that attempt'}); "
                    "restarts resumed at epochs "
                    f"{resumed_at}{same}")
            r.notes.append(note)
    if leftovers:
        row("interruptions", "training (configs/train_global.json) killed with SIGKILL", "").notes.append(
            f"a kill while a checkpoint is written leaves that write's hidden temporary file ({len(leftovers)} here, "
            f"e.g. {Path(leftovers[0]).name}): never read, not cleaned up; the checkpoints themselves are intact")

    log("interruptions: inference killed halfway ...")
    C.make_phantoms(work / "inf", n_images=6, fractions={"test": 1.0})
    expected = sorted(str(p) for p in (work / "inf" / "images").iterdir())
    for hang in (1, 3, 5):
        out = work / f"inference_{hang}" / "out"
        report = harness(out.parent, C.inference_args(out, dataset_dir=work / "inf" / "images"), "--kills", "1",
                         "--hang_after", str(hang))
        rows = C.read_csv(out / "predictions.csv") if (out / "predictions.csv").exists() else []
        images = [r["image"] for r in rows]
        log_text = (out.parent / "logs" / "attempt_1.log").read_text()
        kept = {n: t for n, t in report["attempts"][0]["files_after"].items() if n.endswith((".nii.gz", ".png"))}
        untouched = all((out / n).stat().st_mtime_ns == t for n, t in kept.items())
        ok = (report["attempts"][-1]["status"] == 0 and sorted(images) == expected and untouched
              and f"{hang} images already done are skipped" in log_text)
        lost = len(set(expected) - set(images)) + len(images) - len(set(images))
        row("interruptions", "batch inference (configs/inference.json) killed with SIGKILL",
            "restarted with the same command: skips the images done (their files untouched), finishes the rest; "
            "predictions.csv complete, no duplicates").add(ok, lost, f"killed after image {hang} of 6")


# ------------------------------------------------------------------------------------------------- resources
def full_tmpfs(disk: Path, phantoms: Path, expected: list[str]) -> None:
    """A real full disk: inference into tmpfs folders of a few sizes (where ``mount`` is allowed), then the same
    command after the disk is made larger."""
    how = ("real full disk (a small tmpfs): the run ends with `error: disk full ...` (exit 2), every finished row "
           "and file whole; after `remount,size=64m` the same command finishes the rest")
    for size in ("300k", "700k", "1m"):
        folder = disk / size
        folder.mkdir(parents=True, exist_ok=True)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode != 0:
            row("resource faults", "full disk during inference: a small tmpfs", how).notes.append(
                "mount is not allowed here: no real full disk tried")
            return
        try:
            out = folder / "out"
            args = C.inference_args(out, dataset_dir=phantoms / "images")
            result = C.run_bundle(args)
            if result.returncode == 2:
                ok, line = one_line_ok(result, "disk full")
                rows = C.read_csv(out / "predictions.csv.partial") if (out / "predictions.csv.partial").exists() else []
                outcome = f"stopped: {line[:80]}"
            else:
                rows = C.read_csv(out / "predictions.csv") if (out / "predictions.csv").exists() else []
                failures = C.read_csv(out / "failures.csv") if (out / "failures.csv").exists() else []
                ok = False  # a full disk must stop the run (every later image would fail the same way)
                outcome = f"went on: {len(rows)} written, {len(failures)} failures.csv rows"
                if result.returncode == 0 and not failures:
                    row("resource faults", "full disk during inference: a small tmpfs", how).notes.append(
                        f"{size}: everything fitted; not counted")
                    continue
            whole = all((out / r["saliency_file"]).is_file() and (out / r["figure_file"]).is_file() for r in rows)
            temporaries = C.temporary_leftovers(out) if out.exists() else []
            subprocess.run(["mount", "-o", "remount,size=64m", str(folder)], check=True)
            again = C.run_bundle(args)
            final = C.read_csv(out / "predictions.csv") if (out / "predictions.csv").exists() else []
            finished = again.returncode == 0 and sorted(r["image"] for r in final) == expected
            row("resource faults", "full disk during inference: a small tmpfs", how).add(
                ok and whole and finished and not temporaries, len(temporaries) + (not whole),
                f"{size}: {outcome}")
        finally:
            subprocess.run(["umount", str(folder)], capture_output=True)


def resources(work: Path) -> None:
    log("resource faults ...")
    C.make_phantoms(work / "inf", n_images=4, fractions={"test": 1.0})
    expected = sorted(str(p) for p in (work / "inf" / "images").iterdir())
    for after in (0, 3, 6, 9):
        out = work / f"enospc_{after}"
        args = C.inference_args(out, dataset_dir=work / "inf" / "images")
        result = C.run_bundle(args, env={"GLAM_FAULT_ENOSPC_AFTER": str(after)})
        ok, line = one_line_ok(result, "disk full")
        partial = C.read_csv(out / "predictions.csv.partial") if (out / "predictions.csv.partial").exists() else []
        whole = all((out / r["saliency_file"]).is_file() and (out / r["figure_file"]).is_file() for r in partial)
        temporaries = C.temporary_leftovers(out) if out.exists() else []
        again = C.run_bundle(args)  # space freed: the same command
        rows = C.read_csv(out / "predictions.csv") if (out / "predictions.csv").exists() else []
        finished = again.returncode == 0 and sorted(r["image"] for r in rows) == expected
        lost = (len(partial) - sum(1 for r in rows if r["image"] in {p["image"] for p in partial})) + len(temporaries)
        row("resource faults", "full disk during inference (writes raise ENOSPC)",
            "exit 2, one line `error: disk full (writing <file>); free some space ...`; finished rows and files "
            "kept; the same command then finishes the rest").add(ok and whole and finished and not lost, lost,
                                                                  f"full after {after} files" + ("" if ok else f": {line}"))
    full_tmpfs(work / "tmpfs", work / "inf", expected)
    C.make_phantoms(work / "tr", n_images=4, fractions={"training": 0.5, "validation": 0.5})
    for match in (".last.", ""):
        out, models = work / f"enospc_train{match.strip('.')}" / "out", work / f"enospc_train{match.strip('.')}" / "models"
        base = ["run", "training", "--config_file", C.TRAIN_CONFIG, "--dataset_dir", str(work / "tr"), "--output_dir",
                str(out), "--ckpt_dir", str(models), *C.tiny_args(C.TINY_TRAINING)]
        C.run_bundle(base + ["--max_epochs", "1"])
        before = {p: p.read_bytes() for p in (out / "last.pt", models / "model_global.pt")}
        result = C.run_bundle(base + ["--max_epochs", "3"], env={"GLAM_FAULT_ENOSPC_AFTER": "0",
                                                               "GLAM_FAULT_ENOSPC_MATCH": match})
        ok, line = one_line_ok(result, "disk full")
        lost = sum(p.read_bytes() != data for p, data in before.items() if p.name == "last.pt")
        lost += sum(bool(e) for e in (C.load_every_pt(out) | C.load_every_pt(models)).values())
        row("resource faults", "full disk during training",
            "exit 2, one line `error: disk full ...`; last.pt and model_global.pt as they were (or complete)").add(
            ok and not lost, lost, f"writes to {match or 'any file'} fail" + ("" if ok else f": {line}"))

    # corrupt cache entries (in process: the dataset the training configs build)
    import logging

    import torch

    logging.getLogger("glam_bundle.data.cache").setLevel(logging.ERROR)
    folder = work / "cache_case"
    dataset, entry, good, expected_image = C.cached_one_image(folder)
    marker = folder / "marker"
    for name in C.CACHE_CORRUPTIONS:
        C.corrupt_cache_entry(entry, good, name, marker)
        try:
            ok = torch.equal(torch.as_tensor(dataset[0]["image"]), expected_image) and entry.read_bytes() == good
        except Exception:  # noqa: BLE001 -- a crash of this case
            ok = False
        row("resource faults", "corrupt disk-cache entry (PersistentDataset)",
            "warning `cache (disk): <entry>: unreadable entry, rebuilt (...)`; the item is recomputed").add(
            ok and not marker.exists(), int(marker.exists()), "" if ok else name)

    for config, extra in ((C.INFERENCE_CONFIG, []), (C.TRAIN_CONFIG, [])):
        if config == C.INFERENCE_CONFIG:
            args = C.inference_args(work / "oom_out", dataset_dir=work / "inf" / "images")
        else:
            args = ["run", "training", "--config_file", config, "--dataset_dir", str(work / "tr"), "--output_dir",
                    str(work / "oom_train"), "--ckpt_dir", str(work / "oom_models"), "--max_epochs", "1",
                    *C.tiny_args(C.TINY_TRAINING)]
        result = C.run_bundle(args + extra, env={"GLAM_FAULT_OOM": "1"})
        ok, line = one_line_ok(result, "out of memory", "--batch_size", "--image_size", "--crop_size")
        row("resource faults", "memory exhausted (allocation fails in the network)",
            "exit 2, one line `error: out of memory (...); lower ... --batch_size ..., --num_workers, ... "
            "--image_size and --crop_size ...`").add(ok, note=("simulated: the forward pass raises PyTorch's "
                                                               "`DefaultCPUAllocator: not enough memory`") if ok else line)

    bombs = [case for case in C.IMAGE_CASES if case.name.startswith("bomb")]
    paths = [str(path) for _, path in C.build_image_cases(work / "bombs", work / "unused.png", bombs)]
    from tests.reliability.test_resource_faults import _PEAK_SCRIPT

    result = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, *paths], cwd=REPO_ROOT, capture_output=True,
                            text=True, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    peak = json.loads(result.stdout.strip().splitlines()[-1])
    extra_mb = (peak["refused_kb"] - peak["empty_run_kb"]) / 1024
    r = row("resource faults", "peak memory while refusing every bomb",
            "max RSS after refusing all bombs minus before (same process, same imports): must stay < 100 MB")
    for message in peak["messages"]:
        r.add(bool(message) and "declares 13000x13000" in message and extra_mb < 100)
    r.notes.append(f"{extra_mb:.1f} MB over the empty run ({peak['empty_run_kb'] / 1024:.0f} MB) for "
                   f"{len(paths)} bombs ({', '.join(Path(p).name for p in paths)})")


# ---------------------------------------------------------------------------------------------------- report
def markdown(command: str, seconds: float) -> str:
    total = Row("", "total")
    for r in ROWS:
        total.tried += r.tried
        total.handled += r.handled
        total.crashed += r.crashed
        total.lost += r.lost
    lines = [
        "# Fault suite",
        "",
        "Made by `scripts/fault_suite.py` (issue 15): every case runs through the bundle's real entry points "
        "(`python -m monai.bundle run --config_file configs/...`, the checkpoint loaders, the import and datalist "
        "scripts) at the tiny test frame (368x240, a narrow network). *Handled*: a one-line error naming the file or "
        "setting (in a batch run a row of failures.csv, the run going on), or a valid input processed with complete "
        "outputs. *Crashed*: anything else. *Outputs lost*: finished outputs missing or unreadable afterwards, or "
        "code run from a hostile file. The cases are in `tests/reliability/cases.py`; `tests/reliability/` runs a "
        "subset of them.",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPU cores; "
        f"{seconds / 60:.1f} min.",
        "",
        "| group | fault | cases tried | handled with a named error | crashed | outputs lost | how it is handled |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in ROWS:
        lines.append(f"| {r.group} | {r.fault} | {r.tried} | {r.handled} | {r.crashed} | {r.lost} | {r.how} |")
    lines.append(f"| **total** | | **{total.tried}** | **{total.handled}** | **{total.crashed}** | **{total.lost}** | |")
    lines += ["", "## Notes", ""]
    for r in ROWS:
        for note in r.notes:
            lines.append(f"- {r.fault}: {note}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="markdown report (and .json next to it)")
    parser.add_argument("--work_dir", type=Path, default=None, help="where the cases and runs go (default: a "
                                                                     "temporary folder, removed at the end)")
    parser.add_argument("--seeds", type=int, default=3, help="random variants of each random / kill case")
    parser.add_argument("--only", nargs="*", default=None,
                        choices=["images", "checkpoints", "metadata", "interruptions", "resources"])
    args = parser.parse_args(argv)
    command = "python scripts/fault_suite.py " + " ".join(argv if argv is not None else sys.argv[1:])
    temporary = args.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="fault_suite_")) if temporary else args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    steps = {"images": lambda: hostile_images(work / "images", args.seeds),
             "checkpoints": lambda: hostile_checkpoints(work / "checkpoints"),
             "metadata": lambda: hostile_metadata(work / "metadata"),
             "interruptions": lambda: interruptions(work / "interruptions", max(1, args.seeds - 1)),
             "resources": lambda: resources(work / "resources")}
    try:
        for name, step in steps.items():
            if args.only is None or name in args.only:
                step()
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    text = markdown(command.strip(), time.monotonic() - started)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(
            {"command": command.strip(), "seconds": round(time.monotonic() - started, 1),
             "rows": [asdict(r) for r in ROWS]}, indent=2) + "\n")
    return 1 if any(r.crashed or r.lost for r in ROWS) else 0


if __name__ == "__main__":
    sys.exit(main())
