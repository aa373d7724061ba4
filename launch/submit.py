#!/usr/bin/env python3
"""Submit a pretraining run to SLURM with a consistent process layout, or print the commands (--dry-run).

    python launch/submit.py --nodes 2 --gpus-per-node 8 -- experiment=demo parallel=fsdp name=big
    python launch/submit.py --cpu-tasks 2 -- experiment=demo name=cpu_ddp          # CPU processes (tests, CI)
    python launch/submit.py --nodes 4 --gpus-per-node 8 --dry-run -- name=big      # sbatch, srun, torchrun lines

One task per device: ``--ntasks-per-node`` = ``trainer.devices`` and ``--nodes`` = ``trainer.num_nodes`` are set
together (the app refuses a mismatch). More than one process without ``parallel=`` gets ``parallel=ddp``.
The run directory gets ``slurm/``: the submitted script (``submit.sh``, the copy SLURM runs and reruns on a
requeue), the exact command (``submit.cmd``) and one log per job (``<job id>.out``, appended across requeues).
Standard library only, so it runs before any environment is set up.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

LAUNCH = Path(__file__).resolve().parent


@dataclass
class Layout:
    nodes: int = 1
    gpus_per_node: int = 0
    cpu_tasks: int = 1
    """CPU processes per node when gpus_per_node is 0."""
    overrides: list[str] = field(default_factory=list)

    @property
    def tasks_per_node(self) -> int:
        return self.gpus_per_node or self.cpu_tasks

    @property
    def template(self) -> Path:
        return LAUNCH / ("sbatch_multinode.sh" if self.nodes > 1 else "sbatch_train.sh")

    def run_dir(self) -> Path:
        given = dict(o.split("=", 1) for o in self.overrides if "=" in o and not o.startswith(("+", "~")))
        return Path(given.get("run_dir", f"runs/{given.get('name', 'default')}"))

    def app_overrides(self) -> list[str]:
        """The user's overrides plus the layout (user values for these keys are replaced: one source of truth)."""
        layout = {"trainer.devices": str(self.tasks_per_node), "trainer.num_nodes": str(self.nodes)}
        if self.gpus_per_node == 0:
            layout["trainer.accelerator"] = "cpu"
        if self.nodes * self.tasks_per_node > 1 and not any(o.startswith("parallel=") for o in self.overrides):
            layout["parallel"] = "ddp"
        kept = [o for o in self.overrides if o.split("=", 1)[0] not in layout]
        return kept + [f"{k}={v}" for k, v in layout.items()]

    def sbatch(self, script: Path, extra: list[str]) -> list[str]:
        slurm_dir = self.run_dir() / "slurm"
        cmd = ["sbatch", f"--nodes={self.nodes}", f"--ntasks-per-node={self.tasks_per_node}",
               f"--job-name={self.run_dir().name}", f"--output={slurm_dir}/%j.out"]
        if self.gpus_per_node:
            cmd.append(f"--gpus-per-node={self.gpus_per_node}")
        return cmd + extra + [str(script)] + self.app_overrides()

    def torchrun(self, node_rank: int, master: str = "$MASTER_ADDR") -> list[str]:
        return ["torchrun", f"--nnodes={self.nodes}", f"--nproc-per-node={self.tasks_per_node}",
                f"--node-rank={node_rank}", f"--master-addr={master}", "--master-port=29500",
                "-m", "recurrent_lm.train", "resume=auto"] + self.app_overrides()


def dry_run(layout: Layout, extra: list[str]) -> str:
    script = layout.run_dir() / "slurm" / "submit.sh"
    lines = [f"# {layout.nodes} node(s) x {layout.tasks_per_node} task(s) = {layout.nodes * layout.tasks_per_node} "
             f"processes ({'GPU' if layout.gpus_per_node else 'CPU'}); template {layout.template.name}",
             "# submit (copies the template to " + str(script) + "):", shlex.join(layout.sbatch(script, extra)),
             "# inside the job, once per allocation (one task per device):",
             shlex.join(["srun", "--kill-on-bad-exit=1", ".venv/bin/python", "-m", "recurrent_lm.train",
                         "resume=auto"] + layout.app_overrides()),
             "# without SLURM, on each node i (MASTER_ADDR = node 0's address):"]
    lines += [shlex.join(layout.torchrun(i)).replace("'--master-addr=$MASTER_ADDR'", '--master-addr="$MASTER_ADDR"')
              for i in range(layout.nodes)]
    return "\n".join(lines)


def submit(layout: Layout, extra: list[str]) -> str:
    slurm_dir = layout.run_dir() / "slurm"
    slurm_dir.mkdir(parents=True, exist_ok=True)
    script = slurm_dir / "submit.sh"
    shutil.copyfile(layout.template, script)
    cmd = layout.sbatch(script, extra)
    (slurm_dir / "submit.cmd").write_text(shlex.join(cmd) + "\n")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()
    return out.split()[-1]  # "Submitted batch job <id>"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, overrides = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(prog="launch/submit.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=0, help="0 = a CPU run (see --cpu-tasks)")
    parser.add_argument("--cpu-tasks", type=int, default=1, help="processes per node of a CPU run")
    parser.add_argument("--sbatch-arg", action="append", default=[], help="extra sbatch option, e.g. --time=4:00:00")
    parser.add_argument("--dry-run", action="store_true", help="print the commands; submit nothing")
    args = parser.parse_args(ours)
    if min(args.nodes, args.cpu_tasks) < 1 or args.gpus_per_node < 0:
        parser.error("--nodes and --cpu-tasks must be >= 1, --gpus-per-node >= 0")
    layout = Layout(args.nodes, args.gpus_per_node, args.cpu_tasks, overrides)
    print(dry_run(layout, args.sbatch_arg) if args.dry_run else f"submitted job {submit(layout, args.sbatch_arg)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
