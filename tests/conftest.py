"""Shared fixtures: tiny DiTs, the smoke DAG run, a local file server.

Two tiers:
- fast, the working loop (under 2 minutes on 2 cores): `python -m pytest -m "not slow" -n 2 --dist worksteal`
  (pytest-xdist, one torch thread per worker as set below; work stealing balances the files)
  (add -q, -x, or a file; unit tests, the method contract, Snakemake dry runs).
- full, what CI runs (under 15 minutes): `bash scripts/run_tests.sh`, every test.

A test is marked `slow` (pytest.mark.slow) when it runs a Snakemake job graph (the smoke DAG,
a killed and resumed run, --report, the paper pipelines on fakes), needs the SLURM test
cluster, or takes more than about 5 s on its own in a full run's `--durations=0`. The cost of
a session- or module-scoped fixture falls on whichever test uses it first, so every test that
uses an expensive fixture is slow: the hook below marks the users of EXPENSIVE_FIXTURES (a
new test that uses smoke_run is slow without anyone remembering to say so).
"""

import functools
import http.server
import threading
from pathlib import Path

import pytest
import torch

from diffrepro.diffusion.guidance import GuidedDenoiser
from diffrepro.models.dit import DiTConfig, build_dit

torch.set_num_threads(1)

# fixture -> why a test using it (directly or through another fixture) is slow
EXPENSIVE_FIXTURES = {
    "smoke_run": "runs the whole smoke DAG with Snakemake (minutes)",
    "cluster": "starts a SLURM test cluster and submits jobs to it",
    "trained": "trains the digits CNN (test_metrics.py; about 8 s on 2 cores)",
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        if EXPENSIVE_FIXTURES.keys() & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def tiny_dit(seed: int, hidden: int = 32, depth: int = 1) -> torch.nn.Module:
    """A tiny DiT with random non-zero weights everywhere (DiT zero-inits its output layer,
    which would make every sampler trivially agree)."""
    torch.manual_seed(seed)
    model = build_dit(DiTConfig(input_size=8, patch_size=2, in_channels=1, hidden_size=hidden,
                                depth=depth, num_heads=2, num_classes=10))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_models():
    return {"small": tiny_dit(1, hidden=16), "large": tiny_dit(2, hidden=32, depth=2)}


@pytest.fixture(scope="session")
def tiny_denoisers(tiny_models):
    return {role: GuidedDenoiser(m, cfg_scale=1.5) for role, m in tiny_models.items()}


# The smoke DAG, run once per session and shared by the workflow, cluster and report tests.
@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    from workflow_run import copy_repository

    return copy_repository(tmp_path_factory.mktemp("workflow"))


@pytest.fixture(scope="session")
def smoke_run(workdir):
    from workflow_run import SMOKE, snakemake

    snakemake(workdir, "--cores", "2", "reproduce_all", *SMOKE)
    return workdir


@pytest.fixture(scope="session")
def file_server(tmp_path_factory):
    """A plain HTTP server on 127.0.0.1 over a fresh folder: (folder, base URL)."""
    served = tmp_path_factory.mktemp("served")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
