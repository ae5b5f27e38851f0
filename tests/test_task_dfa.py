"""The dfa task (RegBench), checked against plain-Python re-derivations of what it should produce."""

import json
import os
import random
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import yaml

from seqicl import tasks
from seqicl.errors import ConfigError
from seqicl.tasks.datamodule import TaskDataModule
from seqicl.tasks.dfa import canonical_form, in_context_ngrams, language_split, minimise

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(min_strings=2, max_strings=4, max_length=8)


def small(**kw):
    return tasks.build("dfa", **{**SMALL, **kw})


def automaton(table: torch.Tensor) -> list[dict]:
    """Edges of one automaton from its (max_states, num_letters) transition table."""
    rows = table.tolist()
    n = sum(any(t >= 0 for t in row) for row in rows)
    assert all(t == -1 for row in rows[n:] for t in row), "states must be numbered 0..n-1"
    return [{a: t for a, t in enumerate(row) if t >= 0} for row in rows[:n]]


def strings_of(stream: list, delimiter: int) -> list[list[int]]:
    """The strings of a token stream ``| s1 | s2 | ... | sk |``."""
    assert stream[0] == delimiter and stream[-1] == delimiter
    out, current = [], []
    for x in stream[1:]:
        if x == delimiter:
            out.append(current)
            current = []
        else:
            current.append(x)
    return out


def walk(edges, string, start=0):
    """The states visited reading ``string`` from ``start``; None if it leaves the automaton."""
    state, visited = start, []
    for letter in string:
        if letter not in edges[state]:
            return None
        state = edges[state][letter]
        visited.append(state)
    return visited


def language_upto(edges, state, k) -> set:
    """Every string of length <= k readable from ``state`` (every state accepts)."""
    out, frontier = {()}, [((), state)]
    for _ in range(k):
        frontier = [(s + (a,), t) for s, q in frontier for a, t in edges[q].items()]
        out.update(s for s, _ in frontier)
    return out


def canon(edges) -> bytes:
    return canonical_form(edges, 18)


# --- sequences ---------------------------------------------------------------------------------


def test_batch_layout_and_strings_accepted():
    task = small()
    b = task.sample(40, seed=1)
    n, L = b["inputs"].shape
    assert L == task.seq_len == 4 * 9 and task.vocab_size == 20
    assert b["delimiter"] == 18 and b["pad"] == 19
    assert b["transitions"].shape == (40, 12, 18) and b["states"].shape == (40, L)
    for key in ("inputs", "targets", "transitions", "states"):
        assert b[key].dtype == torch.long
    for i in range(n):
        inputs, targets, states = b["inputs"][i].tolist(), b["targets"][i].tolist(), b["states"][i].tolist()
        edges = automaton(b["transitions"][i])
        m = sum(x != 19 for x in inputs)
        assert inputs[m:] == [19] * (L - m) and targets[m:] == [-100] * (L - m) and states[m:] == [-1] * (L - m)
        assert targets[:m - 1] == inputs[1:m], "targets are the next token of the stream"
        strings = strings_of(inputs[:m] + targets[m - 1:m], 18)
        assert 2 <= len(strings) <= 4
        expected_states = []
        for s in strings:
            assert 1 <= len(s) <= 8
            visited = walk(edges, s)
            assert visited is not None, f"string {s} is not accepted by its automaton"
            expected_states += [0] + visited
        assert states[:m] == expected_states


def test_automata_structure():
    task = tasks.build("dfa", **SMALL)
    b = task.sample(300, seed=2)
    sizes = set()
    for table in b["transitions"]:
        edges = automaton(table)
        sizes.add(len(edges))
        assert 4 <= len(edges) <= 12
        assert len({a for out in edges for a in out}) <= 18
        for s, out in enumerate(edges):
            assert 1 <= len(out) <= 3
            assert s not in out.values(), "self-loop"
        reached, frontier = {0}, [0]
        while frontier:
            frontier = [t for s in frontier for t in edges[s].values() if t not in reached]
            reached.update(frontier)
        assert reached == set(range(len(edges))), "unreachable state"
    assert len(sizes) > 4, "state counts should vary"


def test_automata_are_minimal():
    # Two states of an automaton with n states (plus the rejecting sink) that differ are told
    # apart by a string of length <= n - 1, so comparing languages up to length n is exact.
    task = tasks.build("dfa", min_states=2, max_states=5, max_alphabet=5, **SMALL)
    b = task.sample(60, seed=3)
    for table in b["transitions"]:
        edges = automaton(table)
        n = len(edges)
        languages = [frozenset(language_upto(edges, s, n)) for s in range(n)]
        assert len(set(languages)) == n, "two states accept the same language"


def test_minimise_merges_equivalent_states():
    # Every state reads only 'a': all states are equivalent; the minimal DFA is a one-state loop.
    assert minimise([{0: 1}, {0: 2}, {0: 1}]) == [{0: 0}]
    # A minimal automaton, doubled: edges into a copy of itself, unreachable states added.
    rng = random.Random(0)
    b = tasks.build("dfa").sample(30, seed=4)
    for table in b["transitions"]:
        edges = automaton(table)
        n = len(edges)
        doubled = [dict(out) for out in edges] + [{a: t + n for a, t in out.items()} for out in edges]
        for out in doubled:
            for a in out:
                if rng.random() < 0.5:
                    out[a] = out[a] % n + n * rng.randrange(2)
        doubled.append({0: 0, 1: 2 * n})
        assert minimise(doubled) == edges
        assert canon(minimise(doubled)) == canon(edges)


def test_canonical_form_invariant_under_relabelling():
    rng = random.Random(5)
    b = tasks.build("dfa").sample(50, seed=5)
    forms = set()
    for table in b["transitions"]:
        edges = automaton(table)
        n = len(edges)
        perm = list(range(n))
        rng.shuffle(perm)
        relabelled = [None] * n
        for s, out in enumerate(edges):
            relabelled[perm[s]] = {a: perm[t] for a, t in out.items()}
        assert canonical_form(relabelled, 18, start=perm[0]) == canon(edges)
        assert minimise(relabelled, start=perm[0]) == edges
        forms.add(canon(edges))
    assert len(forms) == 50


# --- splits --------------------------------------------------------------------------------------


def languages(batch) -> list[bytes]:
    return [canon(automaton(t)) for t in batch["transitions"]]


def test_split_views_draw_disjoint_languages():
    task = small()
    drawn = {}
    for split in ("train", "val", "test"):
        view = task.split_view(split, seed=0)
        forms = languages(view.sample(60, seed=1)) + languages(view.sample(60, seed=2))
        assert all(language_split(f) == split for f in forms)
        drawn[split] = set(forms)
    assert not drawn["train"] & drawn["val"] and not drawn["train"] & drawn["test"] and not drawn["val"] & drawn["test"]
    assert {language_split(f) for f in languages(task.sample(200, seed=3))} == {"train", "val", "test"}
    with pytest.raises(ValueError, match="split"):
        task.split_view("dev", seed=0)


def test_training_pool():
    task = small(num_train_automata=24)
    view = task.split_view("train", seed=0)
    pool = set(languages(view.sample(24, seed=7)))
    assert len(pool) == 24, "a sample of num_train_automata examples holds every pool automaton once"
    assert all(language_split(f) == "train" for f in pool)
    assert set(languages(view.sample(100, seed=8))) == pool
    assert set(languages(task.split_view("train", seed=0).sample(30, seed=9))) == pool
    assert set(languages(task.split_view("train", seed=1).sample(24, seed=7))) != pool
    with pytest.raises(ConfigError, match="num_train_automata"):
        tasks.build("dfa", min_states=2, max_states=2, max_alphabet=4, max_edges=1,
                    num_train_automata=1000, **SMALL).split_view("train", seed=0)


def test_make_splits_and_datamodule_keep_languages_apart():
    task = small(num_train_automata=40)
    splits = tasks.make_splits(task, 40, 30, 30, seed=0)
    forms = {k: set(languages(v)) for k, v in splits.items()}
    assert len(forms["train"]) == 40
    assert not forms["train"] & forms["val"] and not forms["train"] & forms["test"] and not forms["val"] & forms["test"]
    for train_size in (None, 40):  # an online stream of fresh languages; a fixed set from a pool
        dm = TaskDataModule(small(num_train_automata=train_size), batch_size=16, train_size=train_size,
                            val_size=30, test_size=30, steps_per_epoch=3, seed=1)
        dm.setup()
        forms = {k: set(languages(v)) for k, v in dm.splits.items()}
        train = set().union(*(languages(batch) for batch in dm.train_dataloader()))
        assert all(language_split(f) == "train" for f in train)
        assert not (train | forms.get("train", set())) & (forms["val"] | forms["test"])
        assert not forms["val"] & forms["test"]


def test_other_tasks_are_their_own_split_views():
    for name in ("mqar", "associative_recall", "induction_head"):
        task = tasks.build(name)
        assert all(task.split_view(split, seed=0) is task for split in ("train", "val", "test"))


# --- determinism ---------------------------------------------------------------------------------

DIGEST = """
import hashlib, torch
from seqicl import tasks
task = tasks.build("dfa", min_strings=2, max_strings=4, max_length=8, num_train_automata=8)
h = hashlib.sha256()
for split in ("train", "val", "test"):
    batch = task.split_view(split, seed=3).sample(6, seed=4)
    for key in sorted(batch):
        value = batch[key]
        h.update(value.numpy().tobytes() if torch.is_tensor(value) else repr(value).encode())
print(h.hexdigest())
"""


def test_same_seed_same_batch_and_independent_of_hash_seed():
    a, b, c = small().sample(20, seed=11), small().sample(20, seed=11), small().sample(20, seed=12)
    assert all(torch.equal(a[k], b[k]) for k in ("inputs", "targets", "transitions", "states"))
    assert not torch.equal(a["inputs"], c["inputs"])
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    digests = [subprocess.run([sys.executable, "-c", DIGEST], env={**env, "PYTHONHASHSEED": seed},
                              capture_output=True, text=True, check=True).stdout.strip()
               for seed in ("0", "12345")]
    assert digests[0] == digests[1] and len(digests[0]) == 64


# --- metrics -------------------------------------------------------------------------------------

# Letters a=0, b=1; delimiter 2; pad 3. State 0 -a-> 1, state 1 -b-> 0; strings of length 1..2.
# The stream "| a b | a |" as inputs/targets, with one pad position.
TINY = dict(num_letters=2, min_alphabet=2, max_alphabet=2, min_states=2, max_states=2, min_edges=1,
            max_edges=2, min_strings=1, max_strings=2, min_length=1, max_length=2)


def tiny_batch():
    return {"inputs": torch.tensor([[2, 0, 1, 2, 0, 3]]),
            "targets": torch.tensor([[0, 1, 2, 0, 2, -100]]),
            "states": torch.tensor([[0, 1, 0, 0, 1, -1]]),
            "transitions": torch.tensor([[[1, -1], [-1, 0]]]),
            "delimiter": 2, "pad": 3}


def metrics(task, batch, logits):
    mask = batch["targets"] != -100
    stats = task.eval_stats(batch, mask=mask, logits=logits)
    return {k: float(s / c) for k, (s, c) in stats.items()}


def test_metrics_on_a_hand_made_example():
    task = tasks.build("dfa", **TINY)
    assert task.seq_len == 6
    batch = tiny_batch()
    # True next-symbol distributions over (a, b, |). After j letters of a string the string
    # ends with probability 1 / (max_length - j + 1) = 1/2 (j = 1), 1 (j = 2).
    p = [[1, 0, 0], [0, .5, .5], [0, 0, 1], [1, 0, 0], [0, .5, .5]]
    torch.testing.assert_close(task.next_symbol_distribution(batch)[0, :5], torch.tensor(p))
    # A model that outputs p (pad: -inf) is perfect.
    perfect = torch.cat([torch.tensor(p).log(), torch.full((5, 1), -float("inf"))], dim=1)
    m = metrics(task, batch, perfect)
    assert m["dfa_accuracy"] == 1.0 and m["tvd"] == pytest.approx(0.0, abs=1e-7)
    # A uniform model: q = 1/3 each; tvd per position 2/3, 1/3, 2/3, 2/3, 1/3 -> 8/15. Its
    # greedy token is 'a' (lowest id), valid in state 0 only: 3 of 5 positions.
    m = metrics(task, batch, torch.zeros(5, 4))
    assert m["tvd"] == pytest.approx(8 / 15) and m["dfa_accuracy"] == pytest.approx(3 / 5)
    # In-context bigram: t0 uniform (nothing seen; greedy a, valid, tvd 2/3); t1 context 'a'
    # unseen -> unigram {a} (invalid in state 1, tvd 1); t2 context 'b' unseen -> unigram
    # {a, b} (greedy a, valid, tvd 1); t3 context '|' -> {a} (valid, tvd 0); t4 context 'a' ->
    # {b} (valid, tvd 1/2). tvd 19/30, accuracy 4/5. The trigram backs off to the same here.
    for n in (2, 3):
        assert m[f"ngram{n}_tvd"] == pytest.approx(19 / 30) and m[f"ngram{n}_dfa_accuracy"] == pytest.approx(4 / 5)


def test_perfect_model_on_samples():
    task = small()
    batch = task.sample(30, seed=6)
    mask = batch["targets"] != -100
    p = task.next_symbol_distribution(batch)
    torch.testing.assert_close(p[mask].sum(-1), torch.ones(int(mask.sum())))
    assert (p[mask].gather(1, batch["targets"][mask][:, None]) > 0).all(), "every target has probability > 0"
    logits = torch.cat([p.log(), torch.full(p.shape[:2] + (1,), -float("inf"))], dim=-1)[mask]
    m = metrics(task, batch, logits)
    assert m["dfa_accuracy"] == 1.0 and m["tvd"] == pytest.approx(0.0, abs=1e-6)
    assert 0 < m["ngram3_tvd"] < 1 and 0 < m["ngram2_dfa_accuracy"] < 1


def true_distribution(edges, state, j, min_length, max_length, num_letters):
    end = Fraction(1, max_length - j + 1) if j >= min_length else Fraction(0)
    out = [Fraction(0)] * (num_letters + 1)
    for a in edges[state]:
        out[a] = (1 - end) / len(edges[state])
    out[num_letters] = end
    return out


def test_true_distribution_against_python():
    task = small(min_length=2)
    batch = task.sample(10, seed=9)
    p = task.next_symbol_distribution(batch)
    for i in range(10):
        edges = automaton(batch["transitions"][i])
        j = 0
        for t, (x, s) in enumerate(zip(batch["inputs"][i].tolist(), batch["states"][i].tolist())):
            if x == task.pad:
                assert (p[i, t] == 0).all()
                continue
            j = 0 if x == task.delimiter else j + 1
            expected = true_distribution(edges, s, j, 2, 8, 18)
            torch.testing.assert_close(p[i, t], torch.tensor([float(v) for v in expected]))


def brute_force_ngram(inputs, targets, order, num_symbols):
    """Per position: the n-gram distribution with back-off, by counting in plain Python."""
    out = []
    for t in range(len(inputs)):
        dist = [1 / num_symbols] * num_symbols
        for length in range(order - 1, -1, -1):
            context = tuple(inputs[max(0, t - length + 1):t + 1]) if length else ()
            if t - length + 1 < 0:
                context = (None,) * (length - t - 1) + context
            counts = [0] * num_symbols
            for j in range(t):
                earlier = tuple(inputs[max(0, j - length + 1):j + 1]) if length else ()
                if j - length + 1 < 0:
                    earlier = (None,) * (length - j - 1) + earlier
                if earlier == context and targets[j] != -100:
                    counts[targets[j]] += 1
            if sum(counts):
                dist = [c / sum(counts) for c in counts]
                break
        out.append(dist)
    return out


def test_ngrams_against_brute_force():
    task = small(num_letters=4, min_alphabet=3, max_alphabet=4, max_length=6)
    batch = task.sample(6, seed=10)
    probs = in_context_ngrams(batch["inputs"], batch["targets"], (1, 2, 3, 4), 5)
    for order in (1, 2, 3, 4):
        expected = []
        for i in range(6):
            inputs, targets = batch["inputs"][i].tolist(), batch["targets"][i].tolist()
            m = sum(x != task.pad for x in inputs)
            expected += brute_force_ngram(inputs[:m], targets[:m], order, 5)
        torch.testing.assert_close(probs[order], torch.tensor(expected))


# --- parameters and configs ----------------------------------------------------------------------


@pytest.mark.parametrize("params, name", [
    (dict(num_letters=1), "num_letters"), (dict(num_letters=2.0), "num_letters"),
    (dict(min_alphabet=0), "min_alphabet"), (dict(min_alphabet=19), "min_alphabet"),
    (dict(max_alphabet=3), "max_alphabet"), (dict(max_alphabet=19), "max_alphabet"),
    (dict(min_states=1), "min_states"), (dict(max_states=3), "max_states"), (dict(max_states=256), "max_states"),
    (dict(min_edges=0), "min_edges"), (dict(max_edges=0), "max_edges"), (dict(max_edges=5), "max_edges"),
    (dict(min_strings=0), "min_strings"), (dict(max_strings=9), "max_strings"),
    (dict(min_length=0), "min_length"), (dict(max_length=0), "max_length"), (dict(max_length="49"), "max_length"),
    (dict(num_train_automata=0), "num_train_automata"), (dict(num_train_automata=True), "num_train_automata"),
    (dict(num_states=5), "num_states"),
])
def test_parameter_validation(params, name):
    with pytest.raises(ValueError, match=name):
        tasks.build("dfa", **params)


def test_unsatisfiable_parameters_fail_with_a_message():
    # One letter: every state reads only it, so the minimal DFA is one state with a self-loop.
    task = tasks.build("dfa", num_letters=2, min_alphabet=1, max_alphabet=1, min_states=2, max_edges=1, **SMALL)
    with pytest.raises(ConfigError, match="min_states"):
        task.draw_automaton(random.Random(0))


def test_config_file_matches_constructor():
    cfg = yaml.safe_load((ROOT / "configs" / "task" / "dfa.yaml").read_text())
    assert cfg.pop("name") == "dfa"
    assert cfg == tasks.parameters("dfa")


def test_experiment_config_composes(tmp_path):
    from hydra import compose, initialize_config_dir

    from seqicl.training.config import validate
    from seqicl.training.run import build_task

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=dfa/transformer", f"paths.output_dir={tmp_path}"])
    c = validate(cfg)
    task = build_task(c["task"])
    assert task.name == "dfa" and c["data"]["train_size"] == task.num_train_automata


@pytest.mark.timeout(300)
def test_training_run_writes_dfa_metrics(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "train", "task=dfa", "task.min_strings=2", "task.max_strings=3",
           "task.max_length=6", "task.num_train_automata=16", "data.train_size=16", "data.batch_size=8",
           "data.val_size=16", "data.test_size=16", "model.d_model=16", "model.n_layers=1",
           "trainer=debug", "trainer.max_steps=4", "trainer.val_check_interval=2",
           "callbacks.progress_bar=none", f"hydra.run.dir={out}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "dfa" and results["steps"] == 4
    for key in ("accuracy", "dfa_accuracy", "tvd", "ngram2_dfa_accuracy", "ngram2_tvd", "ngram3_dfa_accuracy",
                "ngram3_tvd"):
        assert 0.0 <= results["test"][key] <= 1.0, key
