"""Kill-and-resume: SIGKILL private training at a random step, resume, compare.

The training script uses only the public API (PrivacyEngine.make_private and
modelsec_fast.privacy.checkpoint) and checkpoints after every step.
"""

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
TOTAL_STEPS = 20

TRAIN_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from modelsec_fast import PrivacyEngine
    from modelsec_fast.privacy.checkpoint import load_checkpoint, save_checkpoint

    torch.set_num_threads(1)
    ckpt, out, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    n = 48
    data = TensorDataset(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g),
                         torch.arange(n))
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    engine = PrivacyEngine()
    model, optimizer, loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=DataLoader(data, batch_size=6),
        noise_multiplier=1.0, max_grad_norm=1.0, loss_reduction="sum",
        noise_generator=torch.Generator().manual_seed(2))
    batches = []
    if os.path.exists(ckpt):
        user = load_checkpoint(path=ckpt, engine=engine, module=model, optimizer=optimizer,
                               data_loader=loader)
        batches = user["batches"]
    print("start", len(engine.accountant), flush=True)
    while len(engine.accountant) < total:
        for x, y, ids in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
            optimizer.step()
            batches.append(ids.tolist())
            save_checkpoint(path=ckpt, engine=engine, module=model, optimizer=optimizer,
                            data_loader=loader, checkpoint_dict={"batches": batches})
            print("step", len(engine.accountant), flush=True)
            if len(engine.accountant) >= total:
                break
    torch.save({"params": [p.detach().clone() for p in model.parameters()],
                "epsilon": engine.get_epsilon(1e-5), "steps": len(engine.accountant),
                "history": list(engine.accountant.history), "batches": batches}, out)
    """
)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run_to_end(script, ckpt, out):
    proc = subprocess.run([sys.executable, str(script), str(ckpt), str(out), str(TOTAL_STEPS)],
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_sigkill_at_a_random_step_then_resume_matches_an_uninterrupted_run(tmp_path):
    seed = random.SystemRandom().randrange(2**32)
    kill_after = random.Random(seed).randint(2, TOTAL_STEPS - 3)
    print(f"kill seed={seed} kill_after_step={kill_after}")
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)

    _run_to_end(script, tmp_path / "ref.ckpt", tmp_path / "ref.out")
    reference = torch.load(tmp_path / "ref.out", weights_only=True)

    ckpt = tmp_path / "run.ckpt"
    victim = subprocess.Popen(
        [sys.executable, str(script), str(ckpt), str(tmp_path / "unused.out"), str(TOTAL_STEPS)],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in victim.stdout:
            if line.strip() == f"step {kill_after}":
                os.kill(victim.pid, signal.SIGKILL)
                break
    finally:
        victim.wait(timeout=120)
    assert victim.returncode == -signal.SIGKILL, victim.stderr.read()[-3000:]
    assert not (tmp_path / "unused.out").exists()

    stdout = _run_to_end(script, ckpt, tmp_path / "run.out")
    resumed_from = int(stdout.splitlines()[0].split()[1])
    assert kill_after <= resumed_from < TOTAL_STEPS
    resumed = torch.load(tmp_path / "run.out", weights_only=True)

    assert resumed["steps"] == reference["steps"] == TOTAL_STEPS
    assert resumed["history"] == reference["history"]
    assert resumed["batches"] == reference["batches"]  # no batch lost or repeated
    assert resumed["epsilon"] == reference["epsilon"]
    for a, b in zip(resumed["params"], reference["params"]):
        assert torch.equal(a, b)
