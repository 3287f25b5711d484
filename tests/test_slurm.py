"""The SLURM path on a real scheduler: the CI preset through `--profile profiles/slurm` on a
local one-node cluster (scripts/slurm-local.sh), with one training job cancelled by `scancel`
while it runs and one evaluation whose process is SIGKILLed (its rule fails, as under the
out-of-memory killer); the profile's `retries:` resubmits both and the DAG completes with the
same table as a local run.

Opt-in (it installs packages and starts daemons as root): COALORA_SLURM=1, which `.ci/run`
sets where it can (root, apt-get). Otherwise the test skips with a one-line reason.

The local cluster has no accounting storage (no slurmdbd, `sacct` fails): job states come
from `squeue`, as profiles/slurm sets; see scripts/slurm-local.sh and README.md.
"""

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm-local.sh"
PRESET = REPO / "config" / "ci.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
# Whole SLURM run (seconds); on expiry Snakemake gets SIGINT, which cancels its SLURM jobs.
TIMEOUT = int(os.environ.get("COALORA_SLURM_TIMEOUT", "1500"))
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.")


def sh(*cmd, check=True, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, check=check, **kw)


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running local cluster: reuses one that is up (same SLURM_LOCAL_DIR), else starts
    one and stops every daemon it started at the end."""
    if os.environ.get("COALORA_SLURM") != "1":
        pytest.skip("set COALORA_SLURM=1 to run on a local SLURM cluster (.ci/run does as root)")
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        pytest.skip("snakemake-executor-plugin-slurm not installed: pip install -e '.[slurm]'")
    reason = sh("bash", str(SCRIPT), "check", check=False)
    if reason.returncode != 0:
        pytest.skip(f"no local SLURM cluster: {reason.stdout.strip()}")
    env = dict(os.environ)
    made_dir = "SLURM_LOCAL_DIR" not in env
    if made_dir:  # not under pytest's tmp: munged needs every parent of its socket traversable
        env["SLURM_LOCAL_DIR"] = tempfile.mkdtemp(prefix="coalora-slurm.")
    started = sh("bash", str(SCRIPT), "status", check=False, env=env).returncode != 0
    try:
        if started:
            t0 = time.monotonic()
            proc = sh("bash", str(SCRIPT), "start", check=False, env=env)
            assert proc.returncode == 0, f"cluster did not start:\n{proc.stderr[-3000:]}"
            print(f"local SLURM cluster started in {time.monotonic() - t0:.1f}s")
        partition = sh("sinfo", "-h", "-o", "%P").stdout.split()[0].rstrip("*")
        yield {"partition": partition}
    finally:
        if started:
            sh("bash", str(SCRIPT), "stop", check=False, env=env)
        if made_dir:
            shutil.rmtree(env["SLURM_LOCAL_DIR"], ignore_errors=True)


def snakemake_cmd(workdir, *args):
    return [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        str(PRESET),
        *args,
    ]


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[1].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\S+)\s+(\d+)$", table, re.M)}


def read_table(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def without_times(rows):
    """Rows without wall-time columns (the only ones that may differ between runs)."""
    return [{k: v for k, v in row.items() if not k.endswith("_seconds")} for row in rows]


def local_cluster_profile(directory: Path, partition: str, rules) -> Path:
    """A second profile, layered after profiles/slurm: this cluster's partition, an account
    (accepted, not checked, without accounting), a short first status poll, and memory that
    fits a small node. Top-level keys replace those of profiles/slurm, so the resource maps
    are profiles/slurm's, updated. Job states come from squeue, as profiles/slurm says."""
    base = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    # sacct fails without accounting; squeue also handles scancel'ed jobs (README.md)
    assert base["slurm-status-command"] == "squeue"
    assert base["retries"] >= 1
    small = {"mem_mb": 1500, "runtime": 30}
    layer = {
        "default-resources": {
            **base["default-resources"],
            "slurm_partition": partition,
            "slurm_account": "coalora-ci",
            **small,
        },
        # every rule: the rules' own mem_mb (8000) would not fit two jobs on a small node
        "set-resources": {rule: {**base["set-resources"].get(rule, {}), **small} for rule in rules},
        # first status check after 8 s, not 40 s: CI jobs take seconds (MinJobAge >= 3x this)
        "slurm-init-seconds-before-status-checks": 8,
        "slurm-keep-successful-logs": True,
        "latency-wait": 10,
    }
    directory.mkdir(parents=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(layer, sort_keys=False))
    return directory


class StopOneOnce(threading.Thread):
    """Watches the run and stops one of its running jobs once: the first candidate seen for
    `after` seconds. Subclasses say what the candidates are and how one is stopped; `stopped`
    records the candidate."""

    def __init__(self, after: float):
        super().__init__(daemon=True)
        self.after = after
        self.done = threading.Event()
        self.stopped = None

    def candidates(self):
        """(key, description) of each running candidate."""
        raise NotImplementedError

    def stop(self, key) -> bool:
        """Stop it; False if it had already ended."""
        raise NotImplementedError

    def run(self):
        first_seen = {}
        while not self.done.is_set():
            now = time.monotonic()
            for key, description in self.candidates():
                first_seen.setdefault(key, now)
                if now - first_seen[key] >= self.after and self.stop(key):
                    self.stopped = description
                    return
            self.done.wait(0.5)


class CancelOneTrainJob(StopOneOnce):
    """Cancels (scancel) the first training job whose command has been running for `after`
    seconds: its SLURM log (written by the in-job Snakemake) shows the shell command.
    `stopped`: (slurm jobid, comment)."""

    def __init__(self, workdir: Path, after=3.0):
        super().__init__(after)
        self.logs = workdir / ".snakemake" / "slurm_logs"

    def command_started(self, jobid):
        for log in self.logs.glob(f"rule_train*/**/{jobid}.log"):
            return "Shell command:" in log.read_text(errors="replace")
        return False

    def candidates(self):
        out = sh("squeue", "-h", "-t", "RUNNING", "-o", "%i|%k", check=False).stdout
        for line in out.splitlines():
            jobid, _, comment = line.strip().partition("|")
            if comment.startswith("rule_train") and self.command_started(jobid):
                yield jobid, (jobid, comment)

    def stop(self, jobid):
        sh("scancel", jobid, check=False)
        return True


class KillOneEvaluation(StopOneOnce):
    """SIGKILLs the first `coalora evaluate` process of the run in `workdir` once it has run
    `after` seconds, as the out-of-memory killer would: the rule fails, so its SLURM job ends
    FAILED, and the profile's `retries:` must submit it again. `stopped`: its arguments."""

    def __init__(self, workdir: Path, after=2.0):
        super().__init__(after)
        self.workdir = workdir.resolve()

    def candidates(self):
        """The Python processes running `coalora.cli evaluate` in workdir (not the shell that
        started them, whose command line holds the same words)."""
        for pid in sh("pgrep", "-f", "coalora.cli evaluate", check=False).stdout.split():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
                cwd = Path(os.readlink(f"/proc/{pid}/cwd")).resolve()
            except OSError:  # ended meanwhile
                continue
            if cwd == self.workdir and "python" in Path(argv[0]).name and "evaluate" in argv:
                yield int(pid), argv

    def stop(self, pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True


def run_with_timeout(cmd, log_path, timeout):
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=ENV, cwd=log_path.parent
        )
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # SIGINT: Snakemake cancels its SLURM jobs and exits (SIGTERM is ignored while
            # jobs run).
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return None


def test_ci_preset_through_slurm_profile_survives_scancel_and_a_failed_rule(
    slurm_cluster, tmp_path
):
    # Reference: the same preset and seed, run locally.
    local = tmp_path / "local"
    local.mkdir()
    proc = subprocess.run(
        snakemake_cmd(local, "--cores", "2"), capture_output=True, text=True, env=ENV, cwd=local
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    counts = job_counts(proc.stdout + proc.stderr)
    rules = sorted(set(counts) - {"all", "total"})
    expected_jobs = sum(counts[r] for r in rules)

    cluster = tmp_path / "cluster"
    cluster.mkdir()
    layer = local_cluster_profile(tmp_path / "local-cluster", slurm_cluster["partition"], rules)
    cmd = snakemake_cmd(
        cluster, "--profile", str(REPO / "profiles" / "slurm"), "--profile", str(layer)
    )
    canceller, killer = CancelOneTrainJob(cluster), KillOneEvaluation(cluster)
    canceller.start()
    killer.start()
    t0 = time.monotonic()
    rc = run_with_timeout(cmd, cluster / "snakemake.log", TIMEOUT)
    seconds = time.monotonic() - t0
    for thread in (canceller, killer):
        thread.done.set()
        thread.join()
    log = (cluster / "snakemake.log").read_text()
    print(f"SLURM run: {seconds:.0f}s, rc={rc}, cancelled {canceller.stopped}")
    print(f"killed: {killer.stopped}")
    assert rc == 0, f"SLURM run failed or timed out (rc={rc}) after {seconds:.0f}s:\n{log[-5000:]}"

    # Every job went through sbatch; the cancelled one and the one whose rule failed were
    # reported and submitted again.
    assert canceller.stopped, "no training job was seen running, none cancelled"
    assert killer.stopped, "no evaluation was seen running, none killed"
    cancelled_id, comment = canceller.stopped
    submitted = {jobid: Path(path) for _, jobid, path in SUBMITTED.findall(log)}
    assert cancelled_id in submitted, f"{cancelled_id} not submitted by this run:\n{log[-3000:]}"
    assert len(submitted) == expected_jobs + 2, (len(submitted), expected_jobs)
    assert f"SLURM-job '{cancelled_id}' failed, SLURM status is: 'CANCELLED'" in log
    failed = re.findall(r"SLURM-job '(\d+)' failed, SLURM status is: 'FAILED'", log)
    assert len(failed) == 1, log[-5000:]
    # The plugin's log path is .../slurm_logs/rule_<rule>/<wildcards>/<jobid>.log.
    for jobid in (cancelled_id, failed[0]):
        same_job = [j for j, p in submitted.items() if p.parent == submitted[jobid].parent]
        assert len(same_job) == 2, (jobid, same_job)
        # Stopped while its command ran; the resubmitted job finished
        # (slurm-keep-successful-logs).
        assert "Shell command:" in submitted[jobid].read_text()
        assert "Finished jobid" in submitted[max(same_job, key=int)].read_text()
    rule_dir = next(p for p in submitted[failed[0]].parts if p.startswith("rule_"))
    assert rule_dir.startswith("rule_evaluate"), submitted[failed[0]]

    # The scheduler's own records (squeue keeps finished jobs for MinJobAge).
    records = sh(
        "squeue", "-h", "--states=all", "-o", "%i|%T", "-j", ",".join(submitted)
    ).stdout.split()
    states = dict(line.split("|") for line in records)
    assert states.pop(cancelled_id) == "CANCELLED"
    assert states.pop(failed[0]) == "FAILED"
    assert set(states) == set(submitted) - {cancelled_id, failed[0]}
    assert set(states.values()) == {"COMPLETED"}, states

    # Same numbers as the local run, apart from wall times.
    local_rows = read_table(local / "results-ci" / "table1.csv")
    cluster_rows = read_table(cluster / "results-ci" / "table1.csv")
    assert "train_seconds" in cluster_rows[0]
    assert without_times(cluster_rows) == without_times(local_rows)
