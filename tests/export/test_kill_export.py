"""Issue 13 item 8, "Nothing lost in training", the export half: `avserve export` SIGKILLed at
random moments over an existing repository leaves it loadable, with the family's model
directories all from one export (the previous one, or the new one when the kill came after
the commit had begun), and the next export finishes cleanly, removing what the killed ones
left. The commit itself (a kill between the journal and the end of the swaps) is set up
in-process, where the moment is exact.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import sys
import time
from pathlib import Path

import pytest
from sigkill import kill_when, launch

from avserve.repository import load_repository
from training import export as exporter
from training.export import ExportOptions, export_run, recover_repository

from .conftest import make_run

FAMILY = "fam"
NAMES = [f"{FAMILY}_av", f"{FAMILY}_audio", f"{FAMILY}_video"]


def snapshot(repository: Path) -> dict[str, dict[str, str]]:
    """{model dir: {relative file: sha256}} of the family's model directories."""
    result = {}
    for name in NAMES:
        directory = repository / name
        if directory.exists():
            result[name] = {
                str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(directory.rglob("*")) if p.is_file()
            }  # fmt: skip
    return result


def which_export(repository: Path, versions: dict[str, dict]) -> str:
    """The export every model directory of the family belongs to; fails on a mix, a missing or
    a half-written directory, or a repository the gateway cannot load."""
    repo = load_repository(repository)
    assert set(repo.routes[FAMILY].values()) == set(NAMES), repo.routes
    current = snapshot(repository)
    for version, files in versions.items():
        if current == files:
            return version
    per_dir = {name: [v for v, files in versions.items() if files[name] == current.get(name)] for name in NAMES}
    raise AssertionError(f"the model directories are not one export: {per_dir}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill-export")
    make_run(root / "A", seed=0)
    make_run(root / "B", seed=1)
    return root


@pytest.fixture(scope="module")
def reference_dirs(runs, tmp_path_factory) -> dict[str, Path]:
    """A complete export of A and of B, each in a repository of its own."""
    result = {}
    for version in ("A", "B"):
        result[version] = tmp_path_factory.mktemp(f"reference-{version}")
        export_run(runs / version, result[version], ExportOptions(family=FAMILY))
    return result


@pytest.fixture(scope="module")
def versions(reference_dirs):
    """What a complete export of A and of B holds (the exporter is deterministic to the byte,
    in this process or another)."""
    result = {version: snapshot(directory) for version, directory in reference_dirs.items()}
    assert result["A"] != result["B"]
    return result


def export_command(run: Path, repository: Path) -> list[str]:
    return [sys.executable, "-m", "avserve.cli", "export", "--checkpoint", str(run), "--repository", str(repository), "--name", FAMILY]


def appears(path: Path):
    """True once `path` appears (one present already is stale: it must go first)."""
    state = {"present": path.exists()}

    def condition() -> bool:
        present = path.exists()
        appeared = present and not state["present"]
        state["present"] = present
        return appeared

    return condition


def appears_then_goes(path: Path):
    appeared = appears(path)
    state = {"seen": False}

    def condition() -> bool:
        state["seen"] = state["seen"] or appeared()
        return state["seen"] and not path.exists()

    return condition


def leftovers(repository: Path) -> list[str]:
    """What exports left behind: hidden entries in the repository, staging directories beside it."""
    inside = [p.name for p in repository.iterdir() if p.name.startswith(".")]
    beside = [p.name for p in repository.parent.glob(f".{repository.name}.export-*")]
    return sorted(inside + beside)


def assert_only_models(repository: Path) -> None:
    """The real tritonserver tries to load every directory in the repository, hidden ones too
    (a leftover would keep a --strict-readiness server unready): only the models are there."""
    assert sorted(p.name for p in repository.iterdir() if p.is_dir()) == sorted(NAMES)


def test_sigkill_export_at_random_moments_keeps_one_complete_export(runs, reference_dirs, versions, tmp_path):
    started = time.monotonic()
    repository = tmp_path / "repository"
    shutil.copytree(reference_dirs["A"], repository)  # the existing repository: an export of A
    assert which_export(repository, versions) == "A"

    # Kill moments, seeded: "launch t" = t s after the process started (imports, loading the
    # checkpoint, tracing, parity checks: ~10 s in all, so a late one may find it finished),
    # "staged t" = t s after its staging directory appeared (the models being built), "commit"
    # = as soon as its journal is being written (before any model directory is touched),
    # "swapped" = as soon as its journal is gone again (every model swapped; the previous
    # versions being deleted). Kills between those two, inside the swap itself, are the
    # in-process tests below, where the moments are exact.
    rng = random.Random(11)
    plan = [("commit", 0.0)] + [
        (kind, {"launch": rng.uniform(0.5, 11.0), "staged": rng.uniform(0.0, 2.5)}.get(kind, 0.0))
        for kind in rng.sample(["launch", "launch", "staged", "commit", "swapped", "swapped"], 6)
    ]
    kills = []
    for index, (kind, moment) in enumerate(plan):
        before = which_export(repository, versions)
        target = "B" if before == "A" else "A"
        log = tmp_path / f"export-{index}.log"
        stale = set(leftovers(repository))  # what earlier kills left is not this launch's doing
        t0 = time.monotonic()
        proc = launch(export_command(runs / target, repository), log)
        if kind == "launch":
            condition = lambda: time.monotonic() - t0 >= moment  # noqa: E731
        elif kind == "staged":
            seen = {}

            def condition() -> bool:
                if "at" not in seen and any(".export-" in n and n not in stale for n in leftovers(repository)):
                    seen["at"] = time.monotonic()
                return "at" in seen and time.monotonic() - seen["at"] >= moment
        elif kind == "commit":
            condition = appears(repository / f".export-{FAMILY}.json.tmp")
        else:
            condition = appears_then_goes(repository / f".export-{FAMILY}.json")
        if not kill_when(proc, condition):
            assert proc.returncode == 0, log.read_text()
            kills.append((kind, round(moment, 2), "finished first"))
            continue
        after = which_export(repository, versions)  # loadable, one export, nothing half-written
        assert after in (before, target)
        assert_only_models(repository)
        left = leftovers(repository)
        kills.append((kind, round(moment, 2), f"{before}->{after}", left))
        # the next export (the next iteration, or the final one) cleans up after this one
    print(f"\nkills (kind, moment, export before->after, leftovers): {kills}")
    killed = [k for k in kills if k[2] != "finished first"]
    assert len(killed) >= 5, kills
    assert any(k[3] for k in killed), "no kill left anything behind to clean up"

    before = which_export(repository, versions)
    target = "B" if before == "A" else "A"
    staged = [repository.parent / n for n in leftovers(repository) if n.startswith(f".{repository.name}.export-")]
    log = tmp_path / "final.log"
    proc = launch(export_command(runs / target, repository), log)
    assert proc.wait(timeout=300) == 0, log.read_text()
    assert which_export(repository, versions) == target
    assert all(f"removed {path}" in log.read_text() for path in staged), log.read_text()
    assert leftovers(repository) == []  # no staging directory, journal or temp file left
    print(f"{len(killed)} kills, {time.monotonic() - started:.0f} s")


# ---- the commit, killed at exact moments (in-process) ------------------------------------------
# These drive `_commit` (what export_model runs once every model is built and checked) on
# copies of the reference exports: the moments are exact and no graph is traced.


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not even `except Exception` handlers)."""


@pytest.fixture()
def repository_a(reference_dirs, tmp_path) -> Path:
    repository = tmp_path / "repository"
    shutil.copytree(reference_dirs["A"], repository)
    return repository


def stage(repository: Path, source: Path, names=NAMES) -> Path:
    """A staging directory as export_model leaves it just before the commit."""
    staging = exporter.new_staging_directory(repository, FAMILY)
    assert staging.parent == repository.parent  # beside the repository, not in it
    for name in names:
        shutil.copytree(source / name, staging / name)
    return staging


def test_a_kill_inside_the_swap_is_completed_by_the_next_export(repository_a, reference_dirs, versions, monkeypatch):
    staging = stage(repository_a, reference_dirs["B"])
    exchange = exporter._exchange
    calls = []

    def dies_at_the_second_swap(*args):
        calls.append(args)
        if len(calls) == 2:
            raise Killed
        exchange(*args)

    monkeypatch.setattr(exporter, "_exchange", dies_at_the_second_swap)
    with pytest.raises(Killed):
        exporter._commit(repository_a, FAMILY, staging, NAMES)
    monkeypatch.undo()
    # the window the exporter's docstring owns up to: one model swapped, the journal says the rest
    assert (repository_a / f".export-{FAMILY}.json").is_file()
    assert snapshot(repository_a)[NAMES[0]] == versions["B"][NAMES[0]]
    assert snapshot(repository_a)[NAMES[1]] == versions["A"][NAMES[1]]
    notes = recover_repository(repository_a)  # what the next export does first, under the lock
    assert any(f"completed the interrupted export of {FAMILY}" in n for n in notes), notes
    assert which_export(repository_a, versions) == "B" and leftovers(repository_a) == []


def test_a_kill_after_the_swap_before_the_clean_up(repository_a, reference_dirs, versions, monkeypatch):
    staging = stage(repository_a, reference_dirs["B"])
    monkeypatch.setattr(exporter.shutil, "rmtree", lambda *a, **k: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        exporter._commit(repository_a, FAMILY, staging, NAMES)
    monkeypatch.undo()
    assert which_export(repository_a, versions) == "B" and staging.is_dir()
    recover_repository(repository_a)
    assert which_export(repository_a, versions) == "B" and leftovers(repository_a) == []


def test_without_rename_exchange_a_kill_between_the_two_renames_is_completed(repository_a, reference_dirs, versions, monkeypatch):
    staging = stage(repository_a, reference_dirs["B"])
    monkeypatch.setattr(exporter, "_renameat2_exchange", lambda a, b: False)
    rename = os.rename

    def dies_after_moving_the_first_model_out(src, dst):
        rename(src, dst)
        if Path(src) == repository_a / NAMES[0]:
            raise Killed

    monkeypatch.setattr(exporter.os, "rename", dies_after_moving_the_first_model_out)
    with pytest.raises(Killed):
        exporter._commit(repository_a, FAMILY, staging, NAMES)
    monkeypatch.undo()
    assert not (repository_a / NAMES[0]).exists()  # the moment without it, which the journal covers
    recover_repository(repository_a)
    assert which_export(repository_a, versions) == "B" and leftovers(repository_a) == []


def test_a_kill_while_writing_the_journal_leaves_the_previous_export(repository_a, reference_dirs, versions, monkeypatch):
    staging = stage(repository_a, reference_dirs["B"])

    def dies_half_way(path, text):
        path.with_name(path.name + ".tmp").write_text(text[: len(text) // 2])
        raise Killed

    monkeypatch.setattr(exporter, "_write_durably", dies_half_way)
    monkeypatch.setattr(exporter.shutil, "rmtree", lambda *a, **k: None)  # a kill cleans nothing up
    with pytest.raises(Killed):
        exporter._commit(repository_a, FAMILY, staging, NAMES)
    monkeypatch.undo()
    assert which_export(repository_a, versions) == "A"
    assert leftovers(repository_a) == sorted([staging.name, f".export-{FAMILY}.json.tmp"])
    assert_only_models(repository_a)
    assert recover_repository(repository_a) and leftovers(repository_a) == []
    assert which_export(repository_a, versions) == "A"


def test_models_the_new_export_lacks_are_removed_with_it(repository_a, reference_dirs):
    """A family re-exported from a model serving fewer input sets must not keep the previous
    export's unimodal models beside the new audio+video one."""
    staging = stage(repository_a, reference_dirs["B"], names=NAMES[:1])
    exporter._commit(repository_a, FAMILY, staging, NAMES[:1])
    assert sorted(p.name for p in repository_a.iterdir()) == [NAMES[0]]
    assert list(load_repository(repository_a).routes[FAMILY].values()) == [NAMES[0]]
