"""Every command in README.md and every example runs as written."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                commands.append(line)
    return commands


def _argv(command: str) -> list[str]:
    argv = shlex.split(command)
    if argv[0] == "autopar" and shutil.which("autopar") is None:
        argv = [sys.executable, "-m", "autopar", *argv[1:]]
    if argv[0] == "python":
        argv[0] = sys.executable
    return argv


def test_readme_has_the_two_opening_commands():
    commands = readme_commands()
    assert commands[0] == "pip install . && autopar demo"
    assert commands[1] == 'pip install ".[test,dask,plot]" && python -m pytest -q'
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines()  # CI runs exactly the README's test command


def test_readme_main_job_runs(tmp_path):
    # The first command's run part, as written, in a scratch folder (it writes ./autopar-demo).
    command = readme_commands()[0].split("&&", 1)[1].strip()
    out = subprocess.run(_argv(command), cwd=tmp_path, capture_output=True, text=True, timeout=500)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "pass 2: render" in out.stdout
    assert (tmp_path / "autopar-demo" / "output" / "manifest.json").is_file()


@pytest.fixture(scope="module")
def _readme_outputs():
    yield
    shutil.rmtree(ROOT / "autopar-demo-small", ignore_errors=True)  # written by the README's demo line


@pytest.mark.parametrize("command", [c for c in readme_commands() if not c.startswith("pip install")])
def test_readme_command_runs(command, _readme_outputs):
    # Run in README order: the demo command writes the input the pack command reads.
    out = subprocess.run(_argv(command), cwd=ROOT, capture_output=True, text=True, timeout=500, env=dict(os.environ))
    assert out.returncode == 0, f"{command}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    assert out.stdout.strip()


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.py")))
def test_example_runs(example):
    out = subprocess.run([sys.executable, str(ROOT / "examples" / example)], cwd=ROOT, capture_output=True, text=True, timeout=500)
    assert out.returncode == 0, out.stderr[-3000:]
    expected = {"dask_cluster.py": "on a dask cluster, 2 threads", "steps.py": "bright pixels", "service.py": "routes:"}.get(example, "autopar chose")
    assert expected in out.stdout, out.stdout[-2000:]


def test_benchmark_script_runs_and_traces_each_entry(tmp_path):
    # One quick workload of the benchmark, as a user would run it: its table and --trace.
    table, trace = tmp_path / "bench.md", tmp_path / "trace.jsonl"
    argv = [sys.executable, str(ROOT / "benchmarks" / "bench_grid.py"), "--buckets", "small", "--only", "sleep 20 ms",
            "--rounds", "1", "--out", str(table), "--trace", str(trace)]
    out = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=500)
    assert out.returncode == 0, out.stderr[-3000:]
    text = table.read_text()
    assert "| sleep 20 ms |" in text and "geometric-mean regret" in text
    assert "| regret | floor |" in text and "Floor (the first pass's fastest configuration" in text
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    entries = {line["entry"] for line in lines}
    assert "serial" in entries and any(e.startswith("autopar ") for e in entries), entries
    assert all(line["workload"] == "small: sleep 20 ms" and line["wall"] > 0 and len(line["collections"]) == 3 for line in lines)
