"""The tutorial notebooks: each owner/scientist pair runs in two real Jupyter kernels at the same time.

The kernels pair through ``loopback=True`` (the loopback file lives in the test's TMPDIR) and the test's
signaling server (``DUET_SIGNALING_URL``); each side has its own identity (``DUET_CONFIG_DIR``). The tests
read the cells' outputs: the values the scientist printed, the denials (``None`` and the warning), the
owner's history and handler tables. See tests/nbpair.py for how the pair is run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest
from nbpair import PairResult, run_pair, table, tagged, text

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PAIRS = ("01-basics", "02-private-statistics", "03-train-on-private-data")
PAIR_SECONDS = 150  # each pair, kernels' start to both notebooks done (pair 03 took ~42 s under load)

Runner = Callable[[str], PairResult]


@pytest.fixture(scope="module")
def run(signaling_url: str, tmp_path_factory: pytest.TempPathFactory) -> Runner:
    """Runs a pair once per module; tests of the same pair share the result."""
    done: dict[str, PairResult] = {}

    def run_one(stem: str) -> PairResult:
        if stem not in done:
            base = tmp_path_factory.mktemp(stem)
            (base / "tmp").mkdir()
            env = {k: v for k, v in os.environ.items() if not k.startswith("DUET_")}
            env |= {"TMPDIR": str(base / "tmp"), "DUET_SIGNALING_URL": signaling_url}
            done[stem] = run_pair(
                NOTEBOOKS / f"{stem}-owner.ipynb",
                NOTEBOOKS / f"{stem}-scientist.ipynb",
                owner_env=env | {"DUET_CONFIG_DIR": str(base / "owner")},
                scientist_env=env | {"DUET_CONFIG_DIR": str(base / "scientist")},
                log_dir=base,
            )
        return done[stem]

    return run_one


def number(pattern: str, haystack: str) -> float:
    match = re.search(pattern, haystack)
    assert match, f"{pattern!r} not found in:\n{haystack}"
    return float(match.group(1))


def assert_denied(nb: nbformat.NotebookNode, tag: str, name: str) -> None:
    """The cell printed None, and the scientist was warned that the request was denied."""
    assert text(nb, tag, stream="stdout").strip() == "None"
    assert f"UserWarning: request {name!r} was denied" in text(nb, tag, stream="stderr")


def by_name(rows: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        out.setdefault(row["name"], []).append(row)
    return out


# ---- the notebooks as files ---------------------------------------------------------------------------


@pytest.mark.parametrize("stem", PAIRS)
def test_pair_files_are_clean_v4(stem: str) -> None:
    for role in ("owner", "scientist"):
        path = NOTEBOOKS / f"{stem}-{role}.ipynb"
        nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
        nbformat.validate(nb)
        assert nb.nbformat == 4
        assert nb.metadata.kernelspec.name == "python3"
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert sum(c.cell_type == "markdown" for c in nb.cells) >= len(code) // 2, "explain the steps"
        for cell in code:
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: outputs not cleared"
            assert len(cell.source.splitlines()) <= 25, f"{path.name}: a long cell:\n{cell.source}"
        source = "\n".join(c.source for c in code)
        if role == "owner":
            assert "duet.launch_duet(loopback=True" in source
            assert len(tagged(nb, "ready")) == 1
        else:
            assert "duet.join_duet(loopback=True" in source


# ---- 01-basics -----------------------------------------------------------------------------------------


def test_basics_pair_runs(run: Runner) -> None:
    assert run("01-basics").seconds < PAIR_SECONDS


def test_basics_scientist_sees_metadata_then_values_it_was_given(run: Runner) -> None:
    nb = run("01-basics").scientist
    store = {row["name"]: row for row in table(nb, "store")}
    assert store["ages"]["tags"] == "[#ages, #ward3]" and store["ages"]["shape"] == "[12]"
    assert store["stay"]["description"] == "Length of each stay, in days"
    assert "PermissionDenied: no grant for this value" in text(nb, "not-asked")
    assert_denied(nb, "denied", "ages")
    # ages [34, 51, 29, 62, 47, 38, 71, 45, 56, 23, 67, 41] and stays [3, 5, 2, 9, 4, 3, 12, 4, 6, 1, 8, 3]
    assert text(nb, "by-hand").strip() == "mean length of stay: 5.00 days"
    assert text(nb, "by-handler").strip() == "mean age: 47.00 years"
    own = {row["name"]: row["status"] for row in table(nb, "own-requests")}
    assert own == {"": "denied", "ages": "denied", "mean_stay": "accepted", "mean_age": "accepted"}


def test_basics_owner_history_shows_who_decided(run: Runner) -> None:
    nb = run("01-basics").owner
    assert text(nb, "click").strip() == "True"  # panel.accept(...) decided the request, as the click does
    history = by_name(table(nb, "history"))
    assert set(history) == {"", "ages", "mean_stay", "mean_age"}
    decided = {name: (rows[0]["decision"], rows[0]["decided_by"]) for name, rows in history.items()}
    assert decided[""] == ("denied", "auto")  # the .get() that did not ask
    assert decided["mean_stay"] == ("accepted", "owner")  # the click in the panel
    assert decided["ages"][0] == "denied" and decided["ages"][1].startswith("handler:")
    assert decided["mean_age"][0] == "accepted" and decided["mean_age"][1].startswith("handler:")
    assert decided["ages"][1] != decided["mean_age"][1]
    log = table(nb, "log")
    assert [row["path"] for row in log] == ["Tensor.mean", "Tensor.mean"]
    assert all(row["status"] == "ok" for row in log)


# ---- 02-private-statistics -------------------------------------------------------------------------------


def test_statistics_pair_runs(run: Runner) -> None:
    assert run("02-private-statistics").seconds < PAIR_SECONDS


def test_statistics_aggregates_match_the_owners_data(run: Runner) -> None:
    pair = run("02-private-statistics")
    truth = text(pair.owner, "truth")
    sci = text(pair.scientist)
    assert number(r"mean weight: ([\d.]+) kg", sci) == pytest.approx(
        number(r"mean weight ([\d.]+) kg", truth), abs=1e-3
    )
    assert number(r"mean height: ([\d.]+) cm", sci) == pytest.approx(
        number(r"mean height ([\d.]+) cm", truth), abs=1e-3
    )
    r = number(r"correlation weight/height: ([-\d.]+)", sci)
    assert r == pytest.approx(number(r"correlation ([-\d.]+)", truth), abs=1e-3)
    assert 0.5 < r < 1  # heavier babies are longer, by construction
    assert 0.3 < number(r"sd of weight: ([\d.]+) kg", sci) < 0.6
    assert "tensor([" not in sci  # no row ever reached the scientist


def test_statistics_raw_column_and_over_budget_are_denied(run: Runner) -> None:
    pair = run("02-private-statistics")
    assert_denied(pair.scientist, "raw", "weights")
    assert_denied(pair.scientist, "over-budget", "max_weight")
    handlers = table(pair.owner, "handlers")
    accept, deny = (f"handler:{row['key']}" for row in handlers)
    assert handlers[0]["action"] == "accept" and handlers[1]["action"] == "deny"
    assert (handlers[0]["elements_released"], handlers[0]["remaining_quota"]) == ("4", "0.0")
    assert handlers[0]["status"] == "exhausted"
    history = [(row["name"], row["decision"], row["decided_by"]) for row in table(pair.owner, "history")]
    assert history == [
        ("weights", "denied", deny),  # 48 numbers never fit the budget of 4
        ("mean_weight", "accepted", accept),
        ("mean_height", "accepted", accept),
        ("correlation", "accepted", accept),
        ("sd_weight", "accepted", accept),  # the last of the budget
        ("max_weight", "denied", deny),  # budget spent: falls through to the deny handler
    ]
    assert "Tensor.sqrt" in {row["path"] for row in table(pair.owner, "log")}


# ---- 03-train-on-private-data -------------------------------------------------------------------------------


def test_training_pair_runs(run: Runner) -> None:
    assert run("03-train-on-private-data").seconds < PAIR_SECONDS


def test_training_reaches_accuracy_and_the_model_comes_home(run: Runner) -> None:
    nb = run("03-train-on-private-data").scientist
    losses = [
        float(x) for x in re.findall(r"epoch \d: mean loss ([\d.]+)", text(nb, "train", stream="stdout"))
    ]
    assert len(losses) == 4 and losses[-1] < losses[0] / 3
    assert "training" in text(nb, "train")  # the tqdm bar
    lab = number(r"test accuracy, measured by the lab: ([\d.]+)", text(nb, "accuracy"))
    home = number(r"test accuracy, model at home: ([\d.]+)", text(nb, "home"))
    assert lab >= 0.85
    assert home == lab  # the weights that came home are the ones the lab measured
    assert "(local)" in text(nb, "model") and "True" in text(nb, "model")
    assert "receiving model" in text(nb, "model")  # duet's transfer bar, on at 100 kB in this notebook
    assert_denied(nb, "peek", "peek")


def test_training_owner_released_only_what_it_agreed_to(run: Runner) -> None:
    nb = run("03-train-on-private-data").owner
    history = [(row["name"], row["decision"]) for row in table(nb, "history")]
    assert history == [("loss", "accepted")] * 4 + [
        ("correct", "accepted"),
        ("peek", "denied"),
        ("model", "accepted"),
    ]
    log = text(nb, "log")
    assert re.search(r"\d+ calls, 0 failed", log)
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\S+)\s+(\d+)$", log, re.M)}
    assert counts.get("Conv2d.__call__", 0) > 0 and counts.get("torch.nn.functional.relu", 0) > 0
    batches = -(-1437 // 64)  # 80 % of the 1797 digits, in batches of 64
    assert counts.get("StepLR.step") == 4, counts  # the schedule stepped on the lab's side, once an epoch
    assert counts.get("Adam.step") == 4 * batches, counts
    assert counts.get("torch.no_grad", 0) >= 1, counts  # the evaluation ran under the lab's no_grad
