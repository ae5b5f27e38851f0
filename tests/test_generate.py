"""``python -m generate``: restoring a checkpoint, evaluating, generating, and incremental decoding."""

import json
import re
from types import SimpleNamespace

import pytest
import torch

from helpers import FAST, run_module
from seqicl import tasks
from seqicl.errors import ConfigError
from seqicl.evaluation.base import Settings, evaluator_for
from seqicl.evaluation.checkpoint import restore
from seqicl.evaluation.continuous import evaluate_continuous
from seqicl.evaluation.decode import continue_prefixes
from seqicl.evaluation.dfa import evaluate_dfa, ngram_continuations, render, walk
from seqicl.evaluation.tokens import evaluate_tokens
from seqicl.models import build_model
from seqicl.models.lm import TokenLM
from seqicl.training.objectives import OBJECTIVES
from seqicl.training.run import build_task

# Backbones covering every kind of decoding state: a key/value cache (attention), a recurrent
# state (gla, lru), token ids (ngram), a convolution window (base_conv), and a hybrid of them.
STEP_MODELS = {
    "attention": {"mixer": {"name": "attention", "n_heads": 2}, "state_mixer": "mlp", "positions": "learned"},
    "gla": {"mixer": "gla", "state_mixer": "swiglu"},
    "lru": {"mixer": "lru", "state_mixer": "mlp"},
    "ngram": {"mixer": {"name": "ngram", "n": 2}, "state_mixer": None},
    "hybrid": {"n_layers": None, "positions": "learned", "blocks": [
        {"mixer": {"name": "base_conv", "kernel_size": 3}, "state_mixer": "mlp"},
        {"mixer": {"name": "ngram", "n": 1}, "state_mixer": None},
        {"mixer": "lru", "state_mixer": "glu"},
        {"mixer": {"name": "attention", "n_heads": 2}, "state_mixer": "mlp"}]},
}


@pytest.mark.parametrize("name", sorted(STEP_MODELS))
def test_token_lm_step_equals_forward(name):
    torch.manual_seed(0)
    model = TokenLM(vocab_size=7, max_len=10, d_model=16, **STEP_MODELS[name]).double().eval()
    tokens = torch.randint(0, 7, (3, 10), generator=torch.Generator().manual_seed(1))
    state = model.init_state(3)
    logits = []
    for t in range(tokens.shape[1]):
        out, state = model.step(tokens[:, t], state)
        logits.append(out)
    torch.testing.assert_close(torch.stack(logits, dim=1), model(tokens), atol=1e-10, rtol=1e-8)
    assert state["position"] == 10
    with pytest.raises(ValueError, match="max_len=10"):
        model.step(tokens[:, 0], state)


# ---------------------------------------------------------------------------------------------
# decoding and the automaton check, against plain re-derivations


def test_greedy_continuations_equal_re_running_the_model():
    torch.manual_seed(0)
    model = TokenLM(vocab_size=6, max_len=16, d_model=16, **STEP_MODELS["hybrid"]).double().eval()
    g = torch.Generator().manual_seed(2)
    prefixes = torch.randint(0, 5, (4, 9), generator=g)
    lengths = torch.tensor([1, 4, 9, 6])
    tokens, count = continue_prefixes(model, prefixes, lengths, max_new=7, stop=5)
    for i in range(4):
        seq, expected = prefixes[i, :lengths[i]].tolist(), []
        while len(expected) < 7 and (not expected or expected[-1] != 5):
            with torch.no_grad():
                nxt = int(model(torch.tensor([seq]))[0, -1].argmax())
            seq.append(nxt)
            expected.append(nxt)
        assert tokens[i, :count[i]].tolist() == expected
        assert (tokens[i, count[i]:] == -1).all()


def test_sampled_continuations_are_seeded_and_greedy_at_temperature_zero():
    torch.manual_seed(0)
    model = TokenLM(vocab_size=6, max_len=16, d_model=16, **STEP_MODELS["gla"]).eval()
    prefixes = torch.randint(0, 5, (6, 5), generator=torch.Generator().manual_seed(3))
    lengths = torch.full((6,), 5)
    hot = torch.full((6,), 2.0)
    a = continue_prefixes(model, prefixes, lengths, 8, 5, hot, torch.Generator().manual_seed(1))
    b = continue_prefixes(model, prefixes, lengths, 8, 5, hot, torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    cold = continue_prefixes(model, prefixes, lengths, 8, 5, torch.zeros(6), torch.Generator().manual_seed(1))
    greedy = continue_prefixes(model, prefixes, lengths, 8, 5)
    assert torch.equal(cold[0], greedy[0])


def _accepts(table: list[list[int]], tokens: list[int], delimiter: int) -> tuple[bool, bool]:
    """(accepted, ended) by walking the automaton in plain Python."""
    if delimiter not in tokens:
        return False, False
    state = 0
    for t in tokens[:tokens.index(delimiter)]:
        if not 0 <= t < len(table[0]) or table[state][t] < 0:
            return False, True
        state = table[state][t]
    return True, True


def test_walk_agrees_with_a_plain_python_walk():
    g = torch.Generator().manual_seed(0)
    n, states, letters, m, delimiter = 200, 3, 3, 5, 3
    transitions = torch.randint(-1, states, (n, states, letters), generator=g)
    tokens = torch.randint(0, 5, (n, m), generator=g)   # letters, the delimiter, and 4 (a pad)
    ends = torch.where(tokens == delimiter, torch.arange(m), m).min(dim=1).values
    count = torch.where(ends < m, ends + 1, m)
    tokens[torch.arange(m) >= count[:, None]] = -1
    accepted, ended, length = walk(transitions, tokens, count, delimiter)
    for i in range(n):
        expected = _accepts(transitions[i].tolist(), tokens[i, :count[i]].tolist(), delimiter)
        assert (bool(accepted[i]), bool(ended[i])) == expected, i
        assert int(length[i]) == int(count[i]) - int(ended[i])
    assert 0 < int(accepted.sum()) < int(ended.sum()) < n


def test_dfa_greedy_generations_equal_re_running_the_model_and_walking_by_hand(tmp_path):
    task = tasks.build("dfa", num_letters=4, min_alphabet=2, max_alphabet=4, min_states=2, max_states=4,
                       max_edges=2, min_strings=2, max_strings=3, max_length=4)
    data = task.sample(10, seed=0)
    torch.manual_seed(0)
    model = TokenLM(vocab_size=task.vocab_size, max_len=task.seq_len, d_model=16, n_layers=1).eval()
    torch.nn.init.normal_(model.head.weight, std=3.0)  # decisive predictions, each token the argmax somewhere
    settings = Settings(out=tmp_path, device=torch.device("cpu"), batch_size=4, seed=0, samples=10, temperature=1.0)
    r = evaluate_dfa(model, task, data, settings)
    verdicts = []
    for i in range(10):
        inputs = data["inputs"][i].tolist()
        start = max(t for t, x in enumerate(inputs) if x == task.delimiter) + 1
        seq, out = inputs[:start], []
        while len(out) < task.max_length + 1 and (not out or out[-1] != task.delimiter):
            with torch.no_grad():
                out.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
            seq.append(out[-1])
        accepted, ended = _accepts(data["transitions"][i].tolist(), out, task.delimiter)
        verdict = "accepted" if accepted else ("rejected" if ended else "unfinished")
        verdicts.append(verdict)
        assert r["samples"][i]["greedy"] == f"{render(out[:-1] if ended else out, task)} ({verdict})"
    assert r["metrics"]["greedy_accepted"] == pytest.approx(verdicts.count("accepted") / 10)
    assert r["generation"]["greedy"]["unfinished"] == pytest.approx(verdicts.count("unfinished") / 10)
    assert set(verdicts) == {"accepted", "rejected", "unfinished"}, verdicts


def _ngram_counts(seq: list[int], order: int, num_symbols: int) -> list[int]:
    """Counts of the next symbol after ``seq`` by the in-context ``order``-gram, in plain Python:
    the symbols that followed the earlier positions ending with the same last ``length`` tokens
    (the start of the sequence is part of a context), ``length`` from ``order - 1`` down to 0;
    all ones (uniform) with nothing earlier."""
    t = len(seq) - 1

    def context(j: int, length: int) -> tuple:
        return tuple(seq[i] if i >= 0 else None for i in range(j - length + 1, j + 1))

    for length in range(order - 1, -1, -1):
        followers = [seq[j + 1] for j in range(t) if context(j, length) == context(t, length)]
        if followers:
            return [followers.count(v) for v in range(num_symbols)]
    return [1] * num_symbols


def _argmax(counts: list) -> int:
    return max(range(len(counts)), key=lambda v: (counts[v], -v))


def _ngram_generate(prefix: list[int], order: int, num_symbols: int, max_new: int, stop: int) -> list[int]:
    seq, out = list(prefix), []
    while len(out) < max_new and (not out or out[-1] != stop):
        out.append(_argmax(_ngram_counts(seq, order, num_symbols)))
        seq.append(out[-1])
    return out


def test_ngram_greedy_continuations_worked_by_hand():
    # Letters a=0, b=1, delimiter 2. Row 0 reads "| a b | b a |", row 1 only "|".
    prefixes = torch.tensor([[2, 0, 1, 2, 1, 0, 2], [2, 2, 2, 2, 2, 2, 2]])
    lengths = torch.tensor([7, 1])
    greedy = torch.zeros(2)
    # 2-gram, row 0: "|" was followed by a and b (a tie: a); "a" by b and "|" (b); "b" by "|" and a
    # (a); then a by b twice and "|" once (b), and so on: it never ends. Row 1: uniform at the
    # first position (a), then the only earlier next token, a.
    tokens, count = ngram_continuations(prefixes, lengths, 2, 3, 5, 2, greedy)
    assert tokens.tolist() == [[0, 1, 0, 1, 0], [0, 0, 0, 0, 0]] and count.tolist() == [5, 5]
    # 3-gram, row 0: "a |" never came before, so back off to "|" (a); "| a" was followed by b;
    # "a b" by "|": the string "a b".
    tokens, count = ngram_continuations(prefixes, lengths, 3, 3, 5, 2, greedy)
    assert tokens[0].tolist() == [0, 1, 2, -1, -1] and count.tolist() == [3, 5]
    transitions = torch.tensor([[[1, -1], [-1, 0]], [[1, -1], [-1, 0]]])  # 0 -a-> 1 -b-> 0
    accepted, ended, _ = walk(transitions, tokens, count, 2)
    assert accepted.tolist() == [True, False] and ended.tolist() == [True, False]


def test_ngram_continuations_equal_a_plain_python_generator():
    task = tasks.build("dfa", num_letters=4, min_alphabet=2, max_alphabet=4, min_states=2, max_states=4,
                       max_edges=2, min_strings=1, max_strings=4, max_length=5)
    data = task.sample(24, seed=3)
    inputs, S, stop = data["inputs"], task.num_letters + 1, task.delimiter
    start = torch.tensor([max(t for t, x in enumerate(row) if x == stop) + 1 for row in inputs.tolist()])
    hot = torch.tensor([0.0] * 24 + [0.7] * 24)
    max_new = task.max_length + 1
    verdicts = []
    for order in (2, 3):
        tokens, count = ngram_continuations(inputs.repeat(2, 1), start.repeat(2), order, S, max_new, stop, hot,
                                            torch.Generator().manual_seed(0))
        again = ngram_continuations(inputs.repeat(2, 1), start.repeat(2), order, S, max_new, stop, hot,
                                    torch.Generator().manual_seed(0))
        assert torch.equal(tokens, again[0]) and torch.equal(count, again[1])
        accepted, ended, _ = walk(data["transitions"].repeat(2, 1, 1), tokens, count, stop)
        for i in range(48):
            prefix = inputs[i % 24, :start[i % 24]].tolist()
            generated = tokens[i, :count[i]].tolist()
            assert (tokens[i, count[i]:] == -1).all()
            if i < 24:
                assert generated == _ngram_generate(prefix, order, S, max_new, stop), (order, i)
            else:  # each sampled symbol is one the n-gram gives a positive probability
                for j, token in enumerate(generated):
                    assert _ngram_counts(prefix + generated[:j], order, S)[token] > 0, (order, i, j)
                assert len(generated) == max_new or generated[-1] == stop
            expected = _accepts(data["transitions"][i % 24].tolist(), generated, stop)
            assert (bool(accepted[i]), bool(ended[i])) == expected, (order, i)
            verdicts.append(expected)
    assert len(set(verdicts)) == 3, verdicts  # accepted, rejected and unfinished strings all occur


def test_sampled_ngram_continuations_follow_the_tempered_distribution():
    prefix = [2, 0, 1, 2, 0, 0, 2, 0, 1, 2, 0]  # "| a b | a a | a b | a": a was followed by b, a, "|", b
    n, temperature = 6000, 0.5
    tokens, _ = ngram_continuations(torch.tensor([prefix] * n), torch.full((n,), len(prefix)), 2, 3, 1, 2,
                                    torch.full((n,), temperature), torch.Generator().manual_seed(0))
    counts = torch.tensor(_ngram_counts(prefix, 2, 3), dtype=torch.float64)
    assert counts.tolist() == [1, 2, 1]
    expected = counts ** (1 / temperature) / (counts ** (1 / temperature)).sum()  # (1/6, 2/3, 1/6)
    frequencies = torch.bincount(tokens[:, 0], minlength=3).double() / n
    torch.testing.assert_close(frequencies, expected, atol=0.02, rtol=0)


def test_dfa_accuracy_by_string_and_ngram_acceptance_equal_plain_loops(tmp_path):
    task = tasks.build("dfa", num_letters=4, min_alphabet=2, max_alphabet=4, min_states=2, max_states=4,
                       max_edges=2, min_strings=2, max_strings=4, max_length=4)
    data = task.sample(16, seed=1)
    torch.manual_seed(0)
    model = TokenLM(vocab_size=task.vocab_size, max_len=task.seq_len, d_model=16, n_layers=1).eval()
    torch.nn.init.normal_(model.head.weight, std=3.0)
    settings = Settings(out=tmp_path, device=torch.device("cpu"), batch_size=6, seed=0, samples=0, temperature=1.0)
    r = evaluate_dfa(model, task, data, settings)
    with torch.no_grad():
        predicted = model(data["inputs"]).argmax(-1)
    S, d = task.num_letters + 1, task.delimiter
    hits = {name: [0] * task.max_strings for name in ("model", 2, 3)}
    scored = [0] * task.max_strings
    accepted = {2: 0, 3: 0}
    for i in range(16):
        table, inputs = data["transitions"][i].tolist(), data["inputs"][i].tolist()
        end = inputs.index(task.pad) if task.pad in inputs else len(inputs)
        k, state = -1, 0
        for t in range(end):
            if inputs[t] == d:
                k, state = k + 1, 0
            else:
                state = table[state][inputs[t]]
            valid = {a for a in range(task.num_letters) if table[state][a] >= 0} | {d}
            scored[k] += 1
            hits["model"][k] += int(predicted[i, t]) in valid
            for order in (2, 3):
                hits[order][k] += _argmax(_ngram_counts(inputs[:t + 1], order, S)) in valid
        start = max(t for t in range(end) if inputs[t] == d) + 1
        for order in (2, 3):
            out = _ngram_generate(inputs[:start], order, S, task.max_length + 1, d)
            accepted[order] += _accepts(table, out, d)[0]
    curves = r["curves"]
    expected = {"dfa_accuracy_by_k": "model", "baseline_ngram2_by_k": 2, "baseline_ngram3_by_k": 3}
    for name, who in expected.items():
        assert curves[name] == pytest.approx([h / c for h, c in zip(hits[who], scored)]), name
    assert curves["dfa_accuracy_by_k"] != curves["baseline_ngram2_by_k"]
    assert r["metrics"]["dfa_accuracy"] == pytest.approx(sum(hits["model"]) / sum(scored))
    for order in (2, 3):
        assert r["metrics"][f"ngram{order}_greedy_accepted"] == pytest.approx(accepted[order] / 16)
        assert r["generation"][f"ngram{order}"]["greedy"]["accepted"] == pytest.approx(accepted[order] / 16)
        assert 0 <= r["generation"][f"ngram{order}"]["sampled"]["accepted"] <= 1
    assert 0 < accepted[3] < 16, accepted
    assert "dfa_accuracy_by_k.png" in r["files"] and "dfa_metrics.png" in r["files"]
    assert_png(tmp_path / "dfa_accuracy_by_k.png")


# ---------------------------------------------------------------------------------------------
# restoring a checkpoint: which task changes a model can serve


def write_checkpoint(path, task_cfg: dict, model_cfg: dict) -> None:
    """A seqicl checkpoint of an untrained model, as python -m train would write it."""
    torch.manual_seed(0)
    model = build_model(model_cfg, build_task(task_cfg))
    config = {"task": task_cfg, "model": model_cfg, "seed": 0, "data": {"test_size": 16}}
    torch.save({"seqicl_config": config, "global_step": 0,
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)


MQAR = {"name": "mqar", "vocab_size": 16, "seq_len": 16, "num_kv_pairs": 2}


def test_a_position_free_model_is_rebuilt_for_longer_sequences(tmp_path):
    write_checkpoint(tmp_path / "m.ckpt", MQAR, {"d_model": 16, "n_layers": 1, "mixer": "attention"})
    short = restore(tmp_path / "m.ckpt")
    longer = restore(tmp_path / "m.ckpt", {"seq_len": 32, "num_kv_pairs": 4})
    assert (short.model.max_len, longer.model.max_len) == (16, 32) and longer.task.seq_len == 32
    tokens = torch.randint(0, 16, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(longer.model(tokens)[:, :16], short.model(tokens[:, :16]))


@pytest.mark.parametrize("model_cfg,depends_on", [
    ({"d_model": 16, "n_layers": 1, "mixer": "hyena"}, "pe"),
    ({"d_model": 16, "n_layers": 1, "mixer": "base_conv"}, "conv.weight"),
    ({"d_model": 16, "n_layers": 1, "mixer": "attention", "positions": "learned"}, "learned positions"),
])
def test_a_model_that_depends_on_its_length_refuses_longer_sequences(tmp_path, model_cfg, depends_on):
    write_checkpoint(tmp_path / "m.ckpt", MQAR, model_cfg)
    restore(tmp_path / "m.ckpt", {"seq_len": 12})
    with pytest.raises(ConfigError, match=f"{depends_on}.*max_len=16"):
        restore(tmp_path / "m.ckpt", {"seq_len": 32})


def test_evaluators_are_chosen_by_task_name_then_kind():
    assert evaluator_for(tasks.build("dfa")) is evaluate_dfa
    assert evaluator_for(tasks.build("mqar")) is evaluate_tokens
    assert evaluator_for(SimpleNamespace(name="linear_regression", kind="continuous")) is evaluate_continuous
    with pytest.raises(ConfigError, match="no evaluator"):
        evaluator_for(SimpleNamespace(name="x", kind="graph"))


def test_token_accuracy_by_position_and_by_pairs_equal_counting_by_hand(tmp_path):
    task = tasks.build("mqar", vocab_size=16, seq_len=16, num_kv_pairs=2)
    data = task.sample(12, seed=0)
    data["num_kv_pairs"] = torch.tensor([2, 3, 5] * 4)  # as a task mixing several numbers of pairs gives it
    torch.manual_seed(0)
    model = TokenLM(vocab_size=16, max_len=16, d_model=16, n_layers=1).eval()
    settings = Settings(out=tmp_path, device=torch.device("cpu"), batch_size=5, seed=0, samples=0, temperature=1.0)
    r = evaluate_tokens(model, task, data, settings)
    with torch.no_grad():
        predicted = model(data["inputs"]).argmax(-1)
    scored = data["targets"] != -100
    correct = [(predicted[i][scored[i]] == data["targets"][i][scored[i]]).float() for i in range(12)]
    by_position = torch.stack(correct).mean(0).tolist()
    by_pairs = {str(k): float(torch.cat([c for c, n in zip(correct, data["num_kv_pairs"]) if n == k]).mean())
                for k in (2, 3, 5)}
    assert r["curves"]["accuracy_by_position"] == pytest.approx(by_position)
    assert r["curves"]["accuracy_by_pairs"] == pytest.approx(by_pairs)
    assert r["metrics"]["accuracy"] == pytest.approx(float(torch.cat(correct).mean()))
    assert r["files"] == ["accuracy_by_position.png", "accuracy_by_pairs.png"]
    assert_png(tmp_path / "accuracy_by_pairs.png")


def test_continuous_curves_are_plotted_with_their_baselines(tmp_path, monkeypatch):
    """A stand-in for the continuous tasks: the objective's and eval_stats' ``*_by_k`` curves."""

    def objective(model, batch, task, train):
        err = (model(batch["xs"], batch["ys"]) - batch["ys"]) ** 2
        ones = torch.ones_like(err)
        return err.mean(), {"mse": (err.sum(), ones.sum()), "mse_by_k": (err.sum(0), ones.sum(0)),
                            "baseline_zero_by_k": ((batch["ys"] ** 2).sum(0), ones.sum(0))}

    monkeypatch.setitem(OBJECTIVES, "stand_in_mse", objective)
    task = SimpleNamespace(name="stand_in", kind="continuous", objective="stand_in_mse", selection_metric="mse")
    model = lambda xs, ys: xs.sum(-1)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    data = {"xs": torch.randn(10, 5, 3, generator=g), "ys": torch.randn(10, 5, generator=g)}
    settings = Settings(out=tmp_path, device=torch.device("cpu"), batch_size=4, seed=0, samples=0, temperature=1.0)
    result = evaluate_continuous(model, task, data, settings)
    expected = ((data["xs"].sum(-1) - data["ys"]) ** 2).mean(0)
    assert result["curves"]["mse_by_k"] == pytest.approx(expected.tolist())
    assert result["metrics"]["mse"] == pytest.approx(float(expected.mean()))
    assert result["files"] == ["mse_by_k.png"] and (tmp_path / "mse_by_k.png").stat().st_size > 1000


# ---------------------------------------------------------------------------------------------
# python -m generate end to end, on checkpoints of short training runs

DFA = ["task=dfa", "task.num_letters=4", "task.min_alphabet=2", "task.max_alphabet=4", "task.min_states=2",
       "task.max_states=4", "task.max_edges=2", "task.min_strings=2", "task.max_strings=4", "task.max_length=6"]


def _train(tmp_path_factory, name: str, *args: str):
    out = tmp_path_factory.mktemp(name)
    proc = run_module("train", *FAST, *args, f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def mqar_run(tmp_path_factory):
    return _train(tmp_path_factory, "mqar")


@pytest.fixture(scope="module")
def dfa_run(tmp_path_factory):
    return _train(tmp_path_factory, "dfa", *DFA)


def generate(out, *args: str):
    proc = run_module("generate", *args, f"hydra.run.dir={out}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "generate.json").read_text()), proc


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, path


def assert_test_metrics_of(run, r: dict) -> None:
    """``r`` holds the metrics the run's results.json reports on its test set."""
    expected = json.loads((run / "results.json").read_text())["test"]
    for name, value in expected.items():
        assert r["metrics"][name] == pytest.approx(value, rel=1e-6, abs=1e-9), name


def test_the_runs_own_test_set_gives_the_runs_test_metrics(mqar_run, tmp_path):
    r, _ = generate(tmp_path, f"ckpt={mqar_run}/checkpoints/best.ckpt", "split=run", "batch_size=24")
    assert r["status"] == "completed" and r["split"] == "run" and r["n_examples"] == 64
    assert_test_metrics_of(mqar_run, r)


def test_token_task_accuracy_by_position_and_pairs(mqar_run, tmp_path):
    """A fresh test set with more pairs in longer sequences than in training (rotary attention reads them)."""
    r, proc = generate(tmp_path, f"ckpt={mqar_run}/checkpoints/best.ckpt", "n_examples=40",
                       "task.seq_len=64", "task.num_kv_pairs=8")
    assert r["task"] == "mqar" and r["task_params"]["seq_len"] == 64 and r["task_overrides"]["num_kv_pairs"] == 8
    assert r["split"] == "fresh" and r["n_examples"] == 40 and r["device"] == "cpu" and r["step"] > 0
    for key in ("checkpoint", "model", "params", "run_seed", "seed", "wall_time_s"):
        assert key in r, key
    m, curves = r["metrics"], r["curves"]
    assert m["scored"] == 40 * 8 and 0 <= m["accuracy"] <= 1 and m["loss"] > 0
    assert m["random_guess_accuracy"] == pytest.approx(1 / 32)
    assert len(curves["accuracy_by_position"]) == 8 and curves["scored_by_position"] == [40] * 8
    assert sum(curves["accuracy_by_position"]) / 8 == pytest.approx(m["accuracy"])
    assert list(curves["accuracy_by_pairs"]) == ["8"]
    assert r["files"] == ["accuracy_by_position.png"]
    assert_png(tmp_path / "accuracy_by_position.png")
    assert "accuracy" in proc.stdout and str(tmp_path) in proc.stdout


def test_dfa_generations_are_checked_against_the_automaton(dfa_run, tmp_path):
    r, proc = generate(tmp_path, f"ckpt={dfa_run}/checkpoints/best.ckpt", "split=run", "samples=22",
                       "batch_size=20", "temperature=0.7")
    assert_test_metrics_of(dfa_run, r)
    m, gen = r["metrics"], r["generation"]
    for name in ("accuracy", "dfa_accuracy", "tvd", "ngram2_dfa_accuracy", "ngram2_tvd", "ngram3_dfa_accuracy",
                 "ngram3_tvd", "greedy_accepted", "sampled_accepted", "ngram2_greedy_accepted",
                 "ngram2_sampled_accepted", "ngram3_greedy_accepted", "ngram3_sampled_accepted"):
        assert 0 <= m[name] <= 1, name
    assert gen["prefixes"] == 64 and gen["max_letters"] == 6 and gen["temperature"] == 0.7
    for who, prefix in (("model", ""), ("ngram2", "ngram2_"), ("ngram3", "ngram3_")):
        for mode in ("greedy", "sampled"):
            outcome = gen[mode] if who == "model" else gen[who][mode]
            assert outcome["accepted"] == m[f"{prefix}{mode}_accepted"]
            assert outcome["accepted"] + outcome["unfinished"] <= 1
            assert 0 <= outcome["mean_length"] <= 6
    assert 1 <= gen["reference_mean_length"] <= 6
    for name in ("dfa_accuracy_by_k", "baseline_ngram2_by_k", "baseline_ngram3_by_k"):
        assert len(r["curves"][name]) == 4 and all(0 <= v <= 1 for v in r["curves"][name]), name
    assert set(r["files"]) == {"accuracy_by_position.png", "dfa_accuracy_by_k.png", "dfa_metrics.png", "samples.txt"}
    for name in ("accuracy_by_position.png", "dfa_accuracy_by_k.png", "dfa_metrics.png"):
        assert_png(tmp_path / name)
    text = (tmp_path / "samples.txt").read_text()
    assert re.findall(r"^example (\d+):", text, re.M) == [str(i) for i in range(22)]  # across batches of 20
    assert text.count("  greedy:") == 22 and text.count("  reference:") == 22
    assert [row["example"] for row in r["samples"]] == [str(i) for i in range(22)]
    assert "sample continuations" in proc.stdout


def test_multirun_gives_each_checkpoint_its_own_directory(mqar_run, dfa_run, tmp_path):
    broken = tmp_path / "broken.ckpt"
    whole = (mqar_run / "checkpoints/best.ckpt").read_bytes()
    broken.write_bytes(whole[:len(whole) // 2])
    ckpts = ",".join(str(p) for p in (mqar_run / "checkpoints/best.ckpt", dfa_run / "checkpoints/best.ckpt", broken))
    proc = run_module("generate", "--multirun", f"ckpt={ckpts}", "n_examples=16", "samples=1",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = [json.loads((tmp_path / "sweep" / str(i) / "generate.json").read_text()) for i in range(3)]
    assert [r["status"] for r in results] == ["completed", "completed", "failed"]
    assert [r.get("task") for r in results[:2]] == ["mqar", "dfa"]
    assert "truncated" in results[2]["error"] and f"failed: {tmp_path / 'sweep' / '2'}" in proc.stderr
    assert_png(tmp_path / "sweep" / "0" / "accuracy_by_position.png")
    assert (tmp_path / "sweep" / "1" / "samples.txt").is_file()


@pytest.mark.parametrize("case,message", [
    ("missing", "does not exist"),
    ("truncated", "truncated, or not a torch file"),
    ("foreign", "is not a seqicl checkpoint: it has no 'seqicl_config'"),
    ("vocabulary", "(vocab_size=128 with these parameters) is larger than the model's embedding (64 tokens)"),
    ("learned positions", "longer than the model's learned positions (max_len=16)"),
    ("task parameter", "task 'mqar' has no parameter 'num_kv_pair'"),
    ("misspelt key", "unknown config key n_exmples (did you mean 'n_examples'?)"),
    ("another task", "the task comes from the checkpoint; change its parameters with task.NAME=VALUE"),
])
def test_bad_input_is_one_line(case, message, mqar_run, tmp_path):
    best = mqar_run / "checkpoints/best.ckpt"
    ckpt, extra = tmp_path / f"{case}.ckpt", []
    if case == "truncated":
        ckpt.write_bytes(best.read_bytes()[:best.stat().st_size // 2])
    elif case == "foreign":
        torch.save({"state_dict": {"weight": torch.zeros(2)}}, ckpt)
    elif case == "learned positions":
        write_checkpoint(ckpt, MQAR, {"d_model": 16, "n_layers": 1, "mixer": "attention", "positions": "learned"})
        extra = ["task.seq_len=32"]
    elif case != "missing":
        ckpt = best
        extra = {"vocabulary": ["task.vocab_size=128"], "task parameter": ["task.num_kv_pair=2"],
                 "misspelt key": ["n_exmples=3"], "another task": ["task=dfa"]}[case]
    out = tmp_path / "out"
    proc = run_module("generate", f"ckpt={ckpt}", *extra, f"hydra.run.dir={out}", timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (out / "generate.json").exists()


def test_a_compression_checkpoint_is_restored_and_evaluated(tmp_path_factory, tmp_path):
    run = _train(tmp_path_factory, "compression", "experiment=mad/compression", "task.vocab_size=6", "task.seq_len=9",
                 "task.num_train_examples=64", "data.batch_size=16", "model.d_model=16")
    r, _ = generate(tmp_path, f"ckpt={run}/checkpoints/best.ckpt", "split=run")
    assert_test_metrics_of(run, r)
    proc = run_module("generate", f"ckpt={run}/checkpoints/best.ckpt", "task.seq_len=12",
                      f"hydra.run.dir={tmp_path}/longer")
    assert proc.returncode == 2 and "one decoder position per token" in proc.stderr
