import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
BENCH = str(Path(sys.executable).parent / "bench")

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def bench(*args, cwd=None, env=None, check=True, timeout=600):
    """Run the real `bench` CLI in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([BENCH, *map(str, args)], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"bench {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def example_plugin_installed():
    """pip-installs the third-party example plugin into the test environment for the session."""
    src = FIXTURES / "bench_plugin_example"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-build-isolation",
                           "--no-deps", str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for d in src.glob("*.egg-info"):
        shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(src / "build", ignore_errors=True)
    from bench_harness.plugins import get_registry

    get_registry(refresh=True)
    yield
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "--quiet", "-y", "bench-plugin-example"],
                   capture_output=True)
    get_registry(refresh=True)


def write_suite(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
