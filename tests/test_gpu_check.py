"""benchmarks/gpu_check.py in its CPU mode: the same script as on the GPU machine, end to end, on tiny shapes.

One run covers the fallbacks: a package whose wheel is missing (setup says so and the rest goes on), a part whose
module is missing (its row says which), a part that overruns its timeout (reported, the later parts still run),
and every CUDA-only row reporting "skipped: no CUDA" by name. The strategy rows' parser reads real pytest output.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402

GPU_ONLY = ["gpu tests (-m gpu, strategies below)", "strategy fsdp", "strategy zero-2", "strategy zero-3",
            *(f"train {shape} {mode} {attn}" for shape in ("125m", "huginn-width") for mode, attn in
              (("eager", "flash"), ("compiled", "sdpa"), ("compiled", "flash")))]


def table_rows(markdown: str) -> dict[str, list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| check")]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split(" | ")] for line in lines)}


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict[str, list[str]], str]:
    tmp = tmp_path_factory.mktemp("gpu_check")
    wheels = tmp / "wheels"
    wheels.mkdir()
    (wheels / "manifest.json").write_text(json.dumps([
        {"name": "omegaconf", "module": "omegaconf", "wheel": "omegaconf-0-py3-none-any.whl", "bytes": 1,
         "needed_by": "present here: never installed"},
        {"name": "absent-package", "module": "recurrent_lm_absent_module", "wheel": "absent-1.0-py3-none-any.whl",
         "bytes": 1, "needed_by": "nothing: its wheel was never brought"}]))
    blocked = tmp / "blocked" / "transformers"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('transformers blocked by test_gpu_check')\n")
    out = tmp / "gpu_check.md"
    env = {"PYTHONPATH": f"{blocked.parent}:{ROOT}", "PATH": "/usr/bin:/bin", "HOME": str(tmp)}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu",
                             "--budget", "240", "--wheels", str(wheels), "--site", str(tmp / "site"), "--out", str(out),
                             "--timeout", "generate=1"], capture_output=True, text=True, env=env, timeout=400)
    assert out.is_file(), result.stdout[-3000:] + result.stderr[-3000:]
    return result, table_rows(out.read_text()), out.read_text()


def test_cpu_mode_runs_every_part_and_writes_the_table(cpu_run):
    result, rows, markdown = cpu_run
    expected = ["setup: packages", "setup: project"] + [name for part in gpu_check.all_parts() for name in part.rows]
    assert list(rows) == expected, result.stdout[-3000:] + result.stderr[-3000:]
    assert markdown.startswith("GPU check on ") and "(cpu), torch " in markdown and "| check | result | figure | seconds |" in markdown
    assert result.returncode == 1  # the forced timeout
    assert rows["setup: project"][0] == "ok"
    assert rows["setup: packages"][0] == "partial: no usable wheel for absent-package"
    assert "present 1" in rows["setup: packages"][1]
    peak = rows["bf16 matmul peak"]
    assert peak[0] == "ok" and float(peak[1].split()[0]) > 0
    for shape in ("125m", "huginn-width"):
        result_, figure, seconds = rows[f"train {shape} eager sdpa"]
        assert result_ == "ok" and "tok/s, MFU " in figure and float(seconds) > 0, figure


def test_cuda_only_rows_say_so_by_name(cpu_run):
    _, rows, _ = cpu_run
    assert {name: rows[name][0] for name in GPU_ONLY} == {name: "skipped: no CUDA" for name in GPU_ONLY}
    assert sorted(name for name, cells in rows.items() if cells[0] == "skipped: no CUDA") == sorted(GPU_ONLY)


def test_a_timeout_and_a_missing_module_are_reported_and_the_rest_runs(cpu_run):
    _, rows, _ = cpu_run
    assert rows["generate fixed r"][0] == rows["generate exit=convergence"][0] == "timeout after 1 s"
    assert rows["coconut gpt2 train step"][0].startswith("skipped: needs transformers: transformers blocked")


def test_strategy_rows_are_read_from_real_pytest_output(tmp_path):
    """A stand-in test file with the strategy test's name and print: one pass, one skip, one failure."""
    (tmp_path / "test_standin.py").write_text(textwrap.dedent(f'''
        import pytest

        @pytest.mark.gpu
        @pytest.mark.parametrize("strategy", ["fsdp", "zero-2", "zero-3"])
        def {gpu_check.STRATEGY_TEST}(strategy):
            if strategy == "zero-2":
                pytest.skip("needs deepspeed")
            print(f"{{strategy}} on 1 GPU(s): max |loss diff| vs one process 1.50e-07")
            assert strategy == "fsdp", "losses differ"
        '''))
    part = gpu_check.Part("strategies", [f"strategy {s}" for s in gpu_check.STRATEGIES],
                          lambda check: [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "gpu", "-v",
                                         "-s", f"--junitxml={gpu_check.junit_file(check)}",
                                         str(tmp_path / "test_standin.py")],
                          timeout=120, gpu_only=False, parse=gpu_check.parse_strategies)
    check = gpu_check.Check("cpu", 120, tmp_path / "site", {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    rows = gpu_check.execute(part, check, {})
    assert [(r.check, r.result) for r in rows] == [("strategy fsdp", "ok"), ("strategy zero-2", "skipped: needs deepspeed"),
                                                   ("strategy zero-3", "FAIL")]
    assert rows[0].figure == "fsdp on 1 GPU(s): max |loss diff| vs one process 1.50e-07"
    assert "losses differ" in rows[2].figure


def test_the_gpu_tests_row_reads_counts_and_skip_reasons(tmp_path):
    """The real gpu-tests command on this CPU machine: every -m gpu test outside the strategies skips, and why."""
    part = next(p for p in gpu_check.all_parts() if p.name == "gpu-tests")
    part.gpu_only = False
    check = gpu_check.Check("cpu", 120, tmp_path / "site", {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    [row] = gpu_check.execute(part, check, {})
    assert row.result.startswith("skipped: needs CUDA and the flash-attn package; needs a CUDA device"), row
    assert row.figure.startswith("4 skipped (")


def test_the_check_knows_every_gpu_test():
    import ast

    source = ast.parse((ROOT / "tests" / "test_parallel.py").read_text())  # read, not imported: no Lightning load
    [strategies] = [ast.literal_eval(node.value) for node in source.body if isinstance(node, ast.Assign)
                    and getattr(node.targets[0], "id", None) == "GPU_STRATEGIES"]
    assert tuple(strategies) == gpu_check.STRATEGIES
    files = gpu_check.gpu_test_files()
    assert "tests/test_parallel.py" in files and "tests/test_model.py" in files
    assert all("@pytest.mark.gpu" in (ROOT / f).read_text() for f in files)


def test_a_prepared_data_cache_needs_no_datasets(tmp_path):
    """The GPU machine has no `datasets` (nor pyarrow, lm-eval, tensorboard): with the cache prepared, the app's
    modules load and prepare_data reopens the same tokens without importing them."""
    from recurrent_lm.data import DataConfig, prepare_data

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("\n\n".join(f"Paragraph {i}: the quick brown fox jumps over it. " * 3
                                              for i in range(300)))
    fields = dict(source=str(corpus), vocab_size=300, cache_dir=str(tmp_path / "cache"), text_unit="paragraph")
    prepared = prepare_data(DataConfig(**fields), 16)
    blocked = tmp_path / "blocked"
    for module in ("datasets", "pyarrow", "lm_eval", "tensorboard"):
        (blocked / module).mkdir(parents=True)
        (blocked / module / "__init__.py").write_text(f"raise ImportError('{module} is absent here')\n")
    code = ("import recurrent_lm.train.cli\nfrom recurrent_lm.data import DataConfig, prepare_data\n"
            f"d = prepare_data(DataConfig(**{fields!r}), 16)\nprint(d.directory, int(d.train.sum()), len(d.train))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{blocked}:{ROOT}"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [str(prepared.directory), str(int(prepared.train.sum())), str(len(prepared.train))]
    # and the blocker is real: building the cache does need datasets
    fresh = dict(fields, cache_dir=str(tmp_path / "cache2"))
    code = f"from recurrent_lm.data import DataConfig, prepare_data\nprepare_data(DataConfig(**{fresh!r}), 16)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{blocked}:{ROOT}"})
    assert result.returncode != 0 and "datasets is absent here" in result.stderr
