"""`make demo`: a whole private-training session, owner and scientist in two processes on this machine.

The owner (a child process) publishes scikit-learn's digits, sets its request handlers and serves. The
scientist (this process) joins through the embedded signaling server with ``loopback=True``, checks the
channel (16 MB each way), sends a small CNN, trains it on data it never sees, asks for the test accuracy
(an aggregate the owner releases), takes the trained model home and checks it on its own copy of the
public test split. The owner then prints its request history and activity summary. Exit code 0 on success.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import warnings
from typing import Any

import torch

import duet

EPOCHS = 4
BATCH = 64
SEED = 7


class DigitsCNN(duet.Module):
    """A small CNN for 8x8 digit images (notebook 03 trains the same with ``hidden=512``)."""

    def __init__(self, torch_ref: Any, hidden: int = 64) -> None:
        super().__init__(torch_ref=torch_ref)
        self.conv1 = self.torch_ref.nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = self.torch_ref.nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = self.torch_ref.nn.Linear(32 * 2 * 2, hidden)
        self.fc2 = self.torch_ref.nn.Linear(hidden, 10)

    def forward(self, x: Any) -> Any:
        f = self.torch_ref.nn.functional
        x = f.max_pool2d(f.relu(self.conv1(x)), 2)
        x = f.max_pool2d(f.relu(self.conv2(x)), 2)
        x = self.torch_ref.flatten(x, 1)
        x = f.relu(self.fc1(x))
        return f.log_softmax(self.fc2(x), dim=1)


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The digits as (train_x, train_y, test_x, test_y): images 1x8x8 scaled to [0, 1], a fixed split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    cut = int(0.8 * len(y))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def say(*parts: object) -> None:
    print(*parts, flush=True)


# ---- the owner's side ---------------------------------------------------------------------------------


def owner() -> int:
    t = time.perf_counter()
    d = duet.launch_duet(loopback=True, name="digits-hospital", quiet=True)
    launch = time.perf_counter() - t
    t = time.perf_counter()
    train_x, train_y, test_x, test_y = digits()
    d.store.publish(train_x, name="train_images", tags=["#digits", "#train"], description="digit scans, 8x8")
    d.store.publish(
        train_y, name="train_labels", tags=["#digits", "#train"], description="what each scan shows"
    )
    d.store.publish(test_x, name="test_images", tags=["#digits", "#test"], description="held-out scans")
    d.store.publish(test_y, name="test_labels", tags=["#digits", "#test"], description="held-out labels")
    # what the scientist may take: one number per epoch (the summed batch losses), one count (the test
    # images classified correctly) and the trained weights; the quotas hold the first two to that size
    d.requests.add_handler(name="loss", action="accept", element_quota=EPOCHS)
    d.requests.add_handler(name="correct", action="accept", element_quota=1)
    d.requests.add_handler(name="model", action="accept")
    d.requests.add_handler(tags=["#digits"], action="deny")  # nothing else about the data leaves
    publish = time.perf_counter() - t
    say("OWNER-READY", d.session_id, f"launch={launch:.3f}", f"publish={publish:.3f}")
    d.wait_for_peer(timeout=120)
    say(f"owner: {d.peer.name if d.peer else '?'} joined")
    d.wait_closed()
    history = d.requests.history.pandas
    say("\nowner: request history")
    say(history[["name", "object_type", "requester", "status", "decided_by"]].to_string(max_rows=20))
    summary = d.log.summary()
    say(f"\nowner: the scientist ran {summary['calls']} calls ({summary['failed']} failed); most used:")
    for path, count in summary["most_used"]:
        say(f"    {count:6d}  {path}")
    d.close()
    return 0


# ---- the scientist's side -----------------------------------------------------------------------------


def settled(ptr: Any) -> None:
    """Block until the owner has run every call sent so far: a metadata request (``requires_grad`` is asked
    afresh each time) travels behind them, and the owner answers it only after it ran them."""
    ptr.requires_grad  # noqa: B018 - the round trip is the point


def scientist(owner_proc: subprocess.Popen[str], started: float) -> int:
    phases: dict[str, float] = {}
    assert owner_proc.stdout is not None
    for line in owner_proc.stdout:
        if line.startswith("OWNER-READY"):
            for field in line.split()[2:]:  # the owner's own phases, timed in its process
                key, _, value = field.partition("=")
                phases[f"{key} (owner)"] = float(value)
            break
        sys.stdout.write(line)
    else:
        raise SystemExit("the owner process stopped before it was ready")

    t = time.perf_counter()
    d = duet.join_duet(loopback=True, name="data-scientist")
    phases["connect"] = time.perf_counter() - t
    say(f"scientist: connected to {d.peer.name if d.peer else '?'} in {phases['connect']:.2f} s")

    t = time.perf_counter()
    for i in range(3):
        assert d.echo(f"message {i}".encode()) == f"message {i}".encode()
    payload = os.urandom(16 << 20)
    t_bulk = time.perf_counter()
    assert d.echo(payload) == payload  # 16 MB to the owner and 16 MB back
    bulk = time.perf_counter() - t_bulk
    phases["channel check"] = time.perf_counter() - t
    say(
        f"scientist: 16 MB each way in {bulk:.2f} s ({32 / bulk:.1f} MB/s), round trip {d.ping() * 1000:.2f} ms"
    )

    say("scientist: the owner's store:")
    say(d.store.pandas[["name", "tags", "type", "shape", "dtype"]].to_string())
    train_x, train_y = d.store["train_images"], d.store["train_labels"]
    test_x, test_y = d.store["test_images"], d.store["test_labels"]
    n_train = train_x.shape[0]

    torch.manual_seed(SEED)
    local_model = DigitsCNN(torch)
    t = time.perf_counter()
    model = local_model.send(d)
    rt = d.torch
    optimizer = rt.optim.Adam(model.parameters(), lr=0.01)
    scheduler = rt.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    settled(scheduler)  # the send is pipelined: wait until the owner has built the model and optimizer
    phases["send model"] = time.perf_counter() - t

    t = time.perf_counter()
    for epoch in range(EPOCHS):
        model.train()
        total = d.python.Float(0.0)
        for start in range(0, n_train, BATCH):
            x, y = train_x[start : start + BATCH], train_y[start : start + BATCH]
            optimizer.zero_grad()
            loss = rt.nn.functional.nll_loss(model(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item()
        scheduler.step()
        mean_loss = total.get(request_block=True, name="loss", reason="training progress", timeout_secs=60)
        say(f"scientist: epoch {epoch + 1}/{EPOCHS}  mean batch loss {mean_loss / -(-n_train // BATCH):.4f}")
    phases["train"] = time.perf_counter() - t

    t = time.perf_counter()
    model.eval()
    with rt.no_grad():
        correct = (model(test_x).argmax(1) == test_y).sum()
    n_correct = correct.get(request_block=True, name="correct", reason="test accuracy", timeout_secs=60)
    remote_acc = int(n_correct) / test_y.shape[0]
    phases["evaluate"] = time.perf_counter() - t
    say(f"scientist: test accuracy on the owner's held-out data: {remote_acc:.1%}")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the denial is the expected outcome here
        leaked = train_x.get(request_block=True, name="peek", reason="just looking", timeout_secs=10)
    say(f"scientist: asked for the raw training images: {'DENIED' if leaked is None else 'RELEASED?!'}")

    t = time.perf_counter()
    trained = model.get(
        request_block=True, name="model", reason="take the trained model home", timeout_secs=60
    )
    phases["get model"] = time.perf_counter() - t
    assert trained is not None and trained.is_local
    _, _, pub_x, pub_y = digits()  # the digits are public: the scientist has its own copy of the test split
    trained.eval()
    with torch.no_grad():
        local_acc = (trained(pub_x).argmax(1) == pub_y).float().mean().item()
    say(f"scientist: the model taken home scores {local_acc:.1%} on the scientist's copy of the test split")
    d.close()

    phases["total"] = time.perf_counter() - started
    say("\nphase timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()))
    ok = remote_acc >= 0.9 and abs(local_acc - remote_acc) < 1e-6 and leaked is None
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--role", choices=["owner", "both"], default="both")
    args = ap.parse_args(argv)
    if args.role == "owner":
        return owner()
    started = time.perf_counter()
    owner_proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "duet.demo", "--role", "owner"], stdout=subprocess.PIPE, text=True
    )
    try:
        code = scientist(owner_proc, started)
        assert owner_proc.stdout is not None
        for line in owner_proc.stdout:
            sys.stdout.write(line)
        owner_code = owner_proc.wait(60)
    finally:
        if owner_proc.poll() is None:
            owner_proc.kill()
    result = "OK" if code == 0 and owner_code == 0 else "FAILED"
    say(f"\ndemo {result}")
    return 0 if result == "OK" else 1


if __name__ == "__main__":
    sys.exit(main())
