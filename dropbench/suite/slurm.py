"""The Slurm executor: what the job of each kind of run asks for (the suite file's ``slurm`` section), and every run
submitted through submitit in job arrays (``slurm_arrays``), a transfer's task after its pretraining's."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from dropbench.core.configs import check_keys
from dropbench.core.errors import UserInputError
from dropbench.core.io import atomic_write_json
from dropbench.core.settings import NON_NEGATIVE_INT, POSITIVE_INT, Check, Settings, setting
from dropbench.suite.executors import Executor, register_executor
from dropbench.suite.running import (
    RENDEZVOUS_PORT,
    Outcome,
    Status,
    command_line,
    conclude,
    detail,
    run_logged,
    skip_or_none,
)
from dropbench.suite.slurm_arrays import Batch, plan_batches
from dropbench.tasks import PRETRAIN_KIND, node_wide, run_kinds

if TYPE_CHECKING:
    from dropbench.suite.plan import Run, Suite


def _set_by_the_suite(options: dict, field_name: str) -> None:
    if "dependency" in options:
        raise UserInputError(f"{field_name}.dependency", "is set by the suite (a transfer waits for its export)")
    if "array" in options:
        raise UserInputError(f"{field_name}.array", "is set by the suite; array_parallelism limits its tasks at once")


POSITIVE = Check(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "must be a number > 0")


@dataclass(frozen=True)
class SlurmResources(Settings):
    """What one Slurm job asks for; ``gpus`` > 1 or ``nodes`` > 1 runs pretraining and the node-wide transfers
    (det/seg) under torchrun (one per node; ``cpus`` and ``gpus`` are per node)."""

    PREFIX: ClassVar[str] = "slurm."

    partition: str | None = None
    nodes: int = setting(1, check=POSITIVE_INT)
    cpus: int = setting(1, check=POSITIVE_INT)
    gpus: int = setting(0, check=NON_NEGATIVE_INT)
    mem_gb: float | None = setting(None, check=Check(lambda v: v is None or POSITIVE.holds(v), "must be GB > 0"))
    time: int = setting(60, check=POSITIVE_INT)  # minutes; a file may give Slurm's formats ("H:M:S", "D-H")
    setup: tuple[str, ...] = ()  # shell lines before the run, e.g. "module load cuda"
    array_parallelism: int = setting(256, check=POSITIVE_INT)  # the tasks of one array that may run at once
    # any other sbatch option, e.g. {"account": "x", "qos": "y"}
    additional: dict = setting(default_factory=dict, check=_set_by_the_suite)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], prefix: str | None = None) -> SlurmResources:
        prefix = cls.PREFIX if prefix is None else prefix
        if "time" in data:
            data = dict(data) | {"time": _parse_minutes(data["time"], f"{prefix}time")}
        return super().from_mapping(data, prefix)


def _parse_minutes(value: Any, field_name: str) -> int:
    """Minutes, or one of Slurm's time formats: "M", "M:S", "H:M:S", "D-H", "D-H:M", "D-H:M:S"."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        days, dash, clock = value.partition("-") if "-" in value else ("0", "", value)
        try:
            day_count, numbers = int(days), [int(part) for part in clock.split(":")]
        except ValueError:
            numbers = []
        if numbers and len(numbers) <= 3 and min(numbers) >= 0 and day_count >= 0:
            if dash:
                hours, minutes, seconds = (numbers + [0, 0])[:3]
            else:
                hours, minutes, seconds = {1: [0, *numbers, 0], 2: [0, *numbers], 3: numbers}[len(numbers)]
            total = day_count * 1440 + hours * 60 + minutes + math.ceil(seconds / 60)
            if total > 0:
                return total
    raise UserInputError(field_name, f"{value!r} is not a time (minutes, 'H:M:S' or 'D-H:M:S')")


def slurm_section(raw: Any) -> dict[str, SlurmResources]:
    """Resources for every kind of run: the section's defaults, then its per-kind mappings (pretrain and each transfer
    task's kind: det, seg, cls, ...)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserInputError("slurm", "must be a mapping (partition, cpus, gpus, mem_gb, time, setup, additional)")
    check_keys(raw, (*SlurmResources.keys(), *run_kinds()), "slurm.")
    defaults = SlurmResources.from_mapping({k: v for k, v in raw.items() if k in SlurmResources.keys()})
    resources = {}
    for kind in run_kinds():
        kind_raw = raw.get(kind) or {}
        if not isinstance(kind_raw, dict):
            raise UserInputError(f"slurm.{kind}", "must be a mapping of resources")
        resources[kind] = SlurmResources.from_mapping(defaults.to_dict() | kind_raw, f"slurm.{kind}.")
        if resources[kind].nodes > 1 and not node_wide(kind):
            raise UserInputError(f"slurm.{kind}.nodes", f"a {kind} transfer runs on one node; set it to 1")
    return resources


SLURM_FOLDER = "slurm"  # submitit's job files, under the runs folder

# Slurm states after which a job will not write a result any more.
SLURM_ACTIVE_STATES = {
    *("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT"),
    *("REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "RESV_DEL_HOLD"),
}


class RunFailed(RuntimeError):
    """A run's command exited with an error (raised inside a Slurm job, so that the job fails)."""


def run_in_job(run: Run, gpus: int, cwd: str, nodes: int = 1) -> int:
    """What a Slurm job executes on each of its nodes: the run's command, logged (node k > 0 into
    ``<log>.node<k>``); a failure fails the job (and ``afterok``)."""
    node = int(os.environ.get("SLURM_NODEID", "0"))
    meeting = {"rendezvous": _rendezvous()} if nodes > 1 else {}
    argv = command_line(run, gpus, prepare=node == 0, nodes=nodes, **meeting)
    log = run.log if node == 0 else run.log.with_name(f"{run.log.name}.node{node}")
    code = run_logged(argv, log, cwd, shield_usr2=True)
    if code != 0:
        raise RunFailed(f"exit code {code}; see {log}")
    return code


def job_command(suite: Suite, run: Run) -> str:
    """What a dry run shows of a run's job: its resources, and the command each of its nodes runs (the
    rendezvous' first node and job id as the job fills them in)."""
    resources = suite.sections["slurm"][run.kind]
    argv = command_line(run, resources.gpus, prepare=False, nodes=resources.nodes)
    return f"[{resources.nodes} node(s) × {resources.gpus} GPU(s), {resources.time} min] {shlex.join(argv)}"


def _rendezvous() -> tuple[str, str]:
    """``(first node:port, job id)`` of the job this process runs in: where its nodes' torchruns meet."""
    hosts = subprocess.run(
        ["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]], capture_output=True, text=True, check=True
    ).stdout.split()
    return f"{hosts[0]}:{RENDEZVOUS_PORT}", os.environ["SLURM_JOB_ID"]


class RunInJob:
    """``run_in_job`` as a submitit checkpointable: at its time limit or on preemption (Slurm's ``USR2``, sent
    ``signal_delay_s`` before the end) the job requeues itself with the same arguments, and the requeued job's
    command resumes the run from its checkpoint (``command_line`` adds ``--resume`` to a pretraining that has one
    and to a transfer whose work folder an earlier attempt left)."""

    def __call__(self, run: Run, gpus: int, cwd: str, nodes: int = 1) -> int:
        return run_in_job(run, gpus, cwd, nodes)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


MAX_REQUEUES = 50  # time limits and preemptions a run may meet before it fails (submitit's default is 3)


def signal_delay_seconds(minutes: int) -> int:
    """How long before its time limit a job is told to requeue: 90 s, or 40 s of a limit under 3 minutes
    (slurmctld looks at time limits every 30 s, so a shorter warning could come after the end)."""
    return 90 if minutes >= 3 else 40


def _squeue_states(job_ids: Sequence[str]) -> dict[str, str] | None:
    """The Slurm state of each job the controller still knows (an array's tasks each by ``<array>_<task>``); None
    when it cannot be asked."""
    if not job_ids:
        return {}
    result = _squeue("--states=all", f"--jobs={','.join(job_ids)}")
    if result.returncode != 0:
        # A job the controller has forgotten (MinJobAge) is "invalid"; anything else: ask again later.
        return {} if "Invalid job id" in result.stderr else None
    return _states(result.stdout)


def _squeue(*options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["squeue", "--noheader", "--array", "--format=%i %T", *options], capture_output=True, text=True
    )


def _states(listing: str) -> dict[str, str]:
    states = {}
    for line in listing.splitlines():
        job_id, _, state = line.strip().partition(" ")
        if job_id:
            states[job_id] = state.strip() or "UNKNOWN"
    return states


def _job_name(suite: Suite, batch: Batch) -> str:
    return f"dropbench:{suite.name}:{batch.kind if batch.is_array else batch.runs[0].name}"


LEDGER = "jobs.json"  # under the Slurm folder: each submitted run's job id, for the next invocation


def _ledger_path(suite: Suite) -> Path:
    return suite.runs_dir / SLURM_FOLDER / LEDGER


def _read_ledger(suite: Suite) -> dict[str, str]:
    path = _ledger_path(suite)
    try:
        entries = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError) as err:
        raise UserInputError(str(path), f"is not a readable job list ({err}); delete it to submit afresh") from None
    return {str(name): str(job_id) for name, job_id in entries.items()} if isinstance(entries, dict) else {}


def _write_ledger(suite: Suite, entries: Mapping[str, str]) -> None:
    path = _ledger_path(suite)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, dict(entries))


def queued_runs(suite: Suite) -> dict[str, str]:
    """The suite's runs that an earlier invocation submitted and Slurm still has queued or running: name → job id."""
    ledger = _read_ledger(suite)
    if not ledger:
        return {}
    result = _squeue(f"--user={os.getuid()}")
    if result.returncode != 0:
        raise UserInputError("--executor", f"cannot ask Slurm for the queue: {result.stderr.strip()}")
    active = {job_id for job_id, state in _states(result.stdout).items() if state.split()[0] in SLURM_ACTIVE_STATES}
    names = {run.name for run in suite.runs}
    return {name: job_id for name, job_id in ledger.items() if name in names and job_id in active}


def array_id(job_id: str) -> str:
    return job_id.partition("_")[0]


def _dependency(batch: Batch, batches: Sequence[Batch], jobs: Mapping[str, Any]) -> str | None:
    """What a batch waits for: an array's task i for task i of the pretraining array (aftercorr); a job alone for
    its pretraining's job or array task (afterok); nothing when its exports exist."""
    if batch.follows is not None:
        return f"aftercorr:{array_id(jobs[batches[batch.follows].runs[0].name].job_id)}"
    afters = sorted({jobs[run.after].job_id for run in batch.runs if run.after in jobs})
    return f"afterok:{':'.join(afters)}" if afters else None


def execute_slurm(
    suite: Suite, cwd: Path, echo: Callable[[str], None] = print, poll_seconds: float = 30.0
) -> list[Outcome]:
    """Submit every unfinished run through submitit, as job arrays (``plan_batches``), and wait for all.

    A run that an earlier, interrupted invocation submitted and Slurm still has is waited for, not submitted again
    (each submitted run's job id is kept in the Slurm folder's ``jobs.json``).
    """
    import submitit
    from submitit.slurm.slurm import SlurmJob

    if shutil.which("sbatch") is None:
        raise UserInputError("--executor", "slurm needs Slurm's sbatch on the PATH")
    folder = suite.runs_dir / SLURM_FOLDER / "%j"
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=MAX_REQUEUES)
    outcomes: dict[str, Outcome] = {}
    jobs: dict[str, Any] = {}  # run name → submitit job
    queued = queued_runs(suite)
    to_submit = []
    for run in suite.runs:
        outcome = None if run.name in queued else skip_or_none(run, outcomes)
        if outcome is not None:
            outcomes[run.name] = outcome
            echo(f"{run.name}: {outcome.status}" + detail(outcome))
        elif run.name in queued:
            jobs[run.name] = SlurmJob(folder=folder, job_id=queued[run.name])
            echo(f"{run.name}: already queued as Slurm job {queued[run.name]}, not submitted again")
        else:
            to_submit.append(run)
    ledger = _read_ledger(suite) | queued
    try:
        batches = plan_batches(to_submit, frozenset(jobs))
        for batch in batches:
            _submit_batch(suite, executor, batch, batches, jobs, outcomes, cwd, echo)
            ledger |= {run.name: jobs[run.name].job_id for run in batch.runs if run.name in jobs}
    finally:
        _write_ledger(suite, ledger)
    try:
        _wait_for_jobs(suite, jobs, outcomes, echo, poll_seconds)
    except KeyboardInterrupt:
        echo(
            "interrupted: the submitted jobs stay in Slurm; run the suite again to wait for them "
            "(a queued run is not submitted twice), or scancel them"
        )
        raise SystemExit(130) from None
    return [outcomes[run.name] for run in suite.runs]


def _submit_batch(
    suite: Suite,
    executor: Any,
    batch: Batch,
    batches: Sequence[Batch],
    jobs: dict[str, Any],
    outcomes: dict[str, Outcome],
    cwd: Path,
    echo: Callable[[str], None],
) -> None:
    """Submit one batch (its runs whose pretraining could not be submitted are skipped) into ``jobs``; a refusal by
    sbatch (a bad partition) fails its runs."""
    runs = []
    for run in batch.runs:
        outcome = skip_or_none(run, outcomes)
        if outcome is None:
            runs.append(run)
        else:
            outcomes[run.name] = outcome
            echo(f"{run.name}: {outcome.status}" + detail(outcome))
    if not runs:
        return
    resources = suite.sections["slurm"][batch.kind]
    dependency = _dependency(batch, batches, jobs)
    try:
        submitted = _submit(executor, runs, _job_name(suite, batch), resources, dependency, cwd)
    except Exception as err:  # noqa: BLE001 - sbatch refused it (a bad partition; its pretraining failed already)
        reason = [line for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        for run in runs:
            outcomes[run.name] = Outcome(run, Status.FAILED, f"not submitted: {reason[-1].strip()}")
            echo(f"{run.name}: failed" + detail(outcomes[run.name]))
        return
    for run, job in zip(runs, submitted, strict=True):
        jobs[run.name] = job
        after = f", after job {jobs[run.after].job_id}" if run.after in jobs else ""
        echo(f"{run.name}: submitted as Slurm job {job.job_id}{after}, log {run.log}")


def _submit(
    executor: Any, runs: Sequence[Run], job_name: str, resources: SlurmResources, after: str | None, cwd: Path
) -> list[Any]:
    """Submit ``runs`` (of one kind) as one Slurm job or array asking for ``resources`` each, with the dependency
    ``after`` when given."""
    additional = dict(resources.additional)
    if after:
        additional["dependency"] = after
    parameters = dict(
        name=job_name,
        timeout_min=resources.time,
        cpus_per_task=resources.cpus,
        nodes=resources.nodes,
        tasks_per_node=1,
        slurm_additional_parameters=additional,
        slurm_setup=list(resources.setup),
        slurm_signal_delay_s=signal_delay_seconds(resources.time),
        slurm_array_parallelism=resources.array_parallelism,
    )
    if resources.partition:
        parameters["slurm_partition"] = resources.partition
    if resources.gpus:
        parameters["gpus_per_node"] = resources.gpus
    if resources.mem_gb:
        parameters["mem_gb"] = resources.mem_gb
    executor.update_parameters(**parameters)
    with executor.batch():
        submissions = [executor.submit(RunInJob(), run, resources.gpus, str(cwd), resources.nodes) for run in runs]
    return submissions


def _wait_for_jobs(
    suite: Suite, jobs: dict[str, Any], outcomes: dict[str, Outcome], echo: Callable[[str], None], poll: float
) -> None:
    """Poll until every job has ended; the transfers of a failed pretraining are cancelled and skipped.

    A job is finished when submitit's result file is there (the run's function returned or raised). Slurm's
    accounting (sacct) is not needed: a job that ended without a result file (cancelled, timed out, out of
    memory) is noticed because it has left squeue's active states.
    """
    waiting = dict(jobs)
    ended_without_result: dict[str, int] = {}
    delay = 1.0  # seconds; grows while nothing changes, up to ``poll``
    while waiting:
        before = len(waiting)
        states = _squeue_states([job.job_id for job in waiting.values()])
        for name, job in list(waiting.items()):
            run = suite.run(name)
            if job.paths.result_pickle.exists():
                try:
                    job.result()
                    outcome = conclude(run, 0)
                except Exception as err:  # noqa: BLE001 - the job's error, whatever it was, is the run's failure
                    outcome = Outcome(run, Status.FAILED, _job_failure(run, job, err))
            elif states is not None and states.get(job.job_id, "GONE").split()[0] not in SLURM_ACTIVE_STATES:
                # Its result file may lag behind on a network file system: look again at the next poll first.
                ended_without_result[name] = ended_without_result.get(name, 0) + 1
                if ended_without_result[name] < 3:
                    continue
                state = states.get(job.job_id, "no longer in the queue")
                outcome = Outcome(
                    run, Status.FAILED, f"Slurm job {job.job_id} {state} without a result; {job.paths.stderr}"
                )
            else:
                continue
            outcomes[name] = outcome
            del waiting[name]
            echo(f"{name}: {outcome.status}" + detail(outcome))
            if outcome.status == Status.FAILED and run.kind == PRETRAIN_KIND:
                for dependent, dependent_job in list(waiting.items()):
                    if suite.run(dependent).after == name:
                        dependent_job.cancel(check=False)
                        del waiting[dependent]
                        outcomes[dependent] = Outcome(
                            suite.run(dependent), Status.SKIPPED, f"its pretraining {name} failed"
                        )
                        echo(f"{dependent}: skipped (Slurm job {dependent_job.job_id} cancelled)")
        if waiting:
            delay = 1.0 if len(waiting) < before else min(poll, delay * 1.5)
            time.sleep(delay)


def _job_failure(run: Run, job: Any, err: Exception) -> str:
    """Why a job that left a result failed: its run's exit code and last log line, or submitit's own error."""
    text = str(err)
    ran = re.search(r"RunFailed: exit code (\d+)", text)  # submitit passes the job's traceback on as text
    if ran:
        return f"{conclude(run, int(ran.group(1))).detail} (Slurm job {job.job_id})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"Slurm job {job.job_id}: {lines[-1] if lines else type(err).__name__}; Slurm output {job.paths.stderr}"


@register_executor
class SlurmExecutor(Executor):
    name = "slurm"
    help = "submitit job arrays, a transfer's task after its pretraining's; resources from the suite's slurm section"
    section = "slurm"

    def __init__(self, dry_run: bool = False, poll_seconds: float = 30.0):
        self.poll_seconds = poll_seconds

    @classmethod
    def parse_section(cls, raw: Any) -> dict[str, SlurmResources]:
        return slurm_section(raw)

    def commands(self, suite: Suite) -> list[tuple[Run, str]]:
        """The finished runs, then each run to submit in the order of its sbatch call: ``array B task i`` (or
        ``job B``, alone) and what it waits for, its resources and its command."""
        finished = [(run, job_command(suite, run)) for run in suite.runs if run.finished()]
        batches = plan_batches([run for run in suite.runs if not run.finished()])
        place = {run.name: (b, i) for b, batch in enumerate(batches) for i, run in enumerate(batch.runs)}

        def where(name: str) -> str:
            b, i = place[name]
            return f"array {b} task {i}" if batches[b].is_array else f"job {b}"

        listed = []
        for batch in batches:
            for run in batch.runs:
                after = f", after {where(run.after)}" if run.after in place else ""
                listed.append((run, f"{where(run.name)}{after}: {job_command(suite, run)}"))
        return finished + listed

    def plan_summary(self, suite: Suite) -> str:
        batches = plan_batches([run for run in suite.runs if not run.finished()])
        parts = []
        for b, batch in enumerate(batches):
            what = f"array {b}: {len(batch.runs)} {batch.kind}" if batch.is_array else f"job {b}: {batch.kind}"
            parts.append(what + (f", task i after array {batch.follows}'s task i" if batch.follows is not None else ""))
        runs = sum(len(batch.runs) for batch in batches)
        return f"slurm: {runs} run(s) to submit in {len(batches)} sbatch call(s); " + "; ".join(parts)

    def gpus_of(self, suite: Suite, kind: str) -> int:
        return suite.sections["slurm"][kind].gpus

    def execute(self, suite: Suite, cwd: Path, echo: Callable[[str], None]) -> list[Outcome]:
        return execute_slurm(suite, cwd, echo, self.poll_seconds)
