"""RegBench (``dfa``): strings the model writes, checked against the automaton, beside the
teacher-forced metrics.

Teacher-forced: the token evaluation of the test sequences, which includes the task's
``eval_stats``: ``dfa_accuracy``, ``tvd`` and the in-context 2-gram and 3-gram baselines on the
same sequences.

Generation: every test sequence ``| s1 | ... | sk`` is cut after the delimiter before its last
string, so the model has read ``k - 1`` strings of the language; it then writes a string and
ends it with the delimiter, reading its own tokens back through incremental decoding. A string
has at most the task's ``max_length`` letters: one without a delimiter by then is unfinished.
Each prefix is continued twice: greedily (argmax over the vocabulary) and sampled at
``temperature``. A generated string is accepted when it ended and each of its letters follows an
edge of the automaton from the start state (every state is accepting, the empty string too).

Baselines: the in-context 2-gram and 3-gram predictors of the teacher-forced metrics
(``seqicl.tasks.dfa.in_context_ngrams``) continue the same prefixes the same way, as generators
(``ngram_continuations``): greedily, and sampled at the same temperature; their strings have the
same length limit and the same check.

By string: ``dfa_accuracy_by_k[k]`` is the teacher-forced ``dfa_accuracy`` over the predictions
made inside the string that has ``k`` strings before it in its sequence (its letters and its end),
``k = 0 .. max_strings - 1``; ``baseline_ngram2_by_k`` and ``baseline_ngram3_by_k`` are those of
the n-gram predictors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqicl.evaluation.base import Settings, Totals, batches, register_evaluator
from seqicl.evaluation.decode import choose_next, continue_prefixes
from seqicl.evaluation.plots import bar_panels
from seqicl.evaluation.tokens import evaluate_tokens
from seqicl.seeding import derive_seed, generator
from seqicl.tasks.base import IGNORE_INDEX
from seqicl.tasks.dfa import in_context_ngrams

MODES = ("greedy", "sampled")
ORDERS = (2, 3)


def last_string_start(inputs: torch.Tensor, delimiter: int) -> torch.Tensor:
    """(n,) the position after each row's last delimiter: where its last string begins."""
    pos = torch.arange(inputs.shape[1], device=inputs.device)
    return torch.where(inputs == delimiter, pos, -1).max(dim=1).values + 1


def walk(transitions: torch.Tensor, tokens: torch.Tensor, count: torch.Tensor, delimiter: int):
    """Check generated strings against their automata.

    ``tokens`` (n, m) are generations (``count`` tokens each) and ``transitions`` (n, states,
    letters) the next state per (state, letter), -1 for no edge. Returns ``accepted`` (ended with
    the delimiter, every letter an edge from the start state on), ``ended`` and the number of
    letters before the end.
    """
    n, m = tokens.shape
    num_letters = transitions.shape[2]
    rows = torch.arange(n, device=tokens.device)
    last = tokens.gather(1, (count - 1).clamp(min=0)[:, None])[:, 0]
    ended = (count > 0) & (last == delimiter)
    letters = count - ended.long()
    state = torch.zeros(n, dtype=torch.long, device=tokens.device)
    ok = torch.ones(n, dtype=torch.bool, device=tokens.device)
    for j in range(m):
        active = j < letters
        token = tokens[:, j]
        target = transitions[rows, state, token.clamp(0, num_letters - 1)]
        valid = (token >= 0) & (token < num_letters) & (target >= 0)
        ok &= ~active | valid
        state = torch.where(active & valid, target, state)
    return ok & ended, ended, letters


@torch.no_grad()
def ngram_continuations(prefixes: torch.Tensor, lengths: torch.Tensor, order: int, num_symbols: int, max_new: int,
                        stop: int, temperature: torch.Tensor, generator: torch.Generator | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Continue row ``i``'s prefix ``prefixes[i, :lengths[i]]`` with the in-context ``order``-gram
    predictor until it emits ``stop`` or has ``max_new`` tokens, as ``continue_prefixes`` does
    with a model (same return values).

    Having read ``x_0 .. x_t`` (the prefix, then its own tokens), the predictor's next-symbol
    distribution ``q`` over the ``num_symbols`` symbols is the one ``in_context_ngrams`` gives at
    position ``t`` of that sequence, teacher-forced: the frequencies of the symbols that followed
    the earlier occurrences of ``x_{t-order+2} .. x_t``, backing off to shorter contexts, uniform
    at ``t = 0``. ``choose_next`` picks the token from ``log q``: the argmax (the lowest id among
    ties) at temperature 0, else a draw from ``q^(1/T) / sum_v q(v)^(1/T)`` at temperature ``T``.
    The prefixes must hold symbols only (ids below ``num_symbols``); what follows them is not read.
    """
    n = prefixes.shape[0]
    device = prefixes.device
    rows = torch.arange(n, device=device)
    width = int(lengths.max()) + max_new
    pos = torch.arange(width, device=device)
    seq = torch.full((n, width), num_symbols, dtype=torch.long, device=device)
    seq[:, :prefixes.shape[1]] = prefixes[:, :width]
    out = torch.full((n, max_new), -1, dtype=torch.long, device=device)
    count = torch.zeros(n, dtype=torch.long, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    for _ in range(max_new):
        active = rows[~done]
        last = lengths[active] + count[active] - 1  # the position of the last token read
        span = int(last.max()) + 1
        targets = torch.where(pos[:span] < last[:, None], seq[active, 1:span + 1], IGNORE_INDEX)
        # The next token, not known yet, is the last scored in its row: no count includes it.
        targets[torch.arange(active.numel(), device=device), last] = 0
        q = in_context_ngrams(seq[active, :span], targets, (order,), num_symbols)[order]
        chosen = choose_next(q[(last + 1).cumsum(dim=0) - 1].log(), temperature[active], generator)
        out[active, count[active]] = chosen
        seq[active, last + 1] = chosen
        count[active] += 1
        done[active] = (chosen == stop) | (count[active] >= max_new)
        if bool(done.all()):
            break
    return out, count


def accuracy_by_string(task, batch: dict, mask: torch.Tensor, logits: torch.Tensor) -> dict:
    """``(sums, counts)`` by string of the teacher-forced ``dfa_accuracy``: entry ``k`` counts the
    scored positions ``t`` with ``k + 1`` delimiters in ``inputs[:t+1]`` (the predictions of the
    letters and the end of the string with ``k`` strings before it) and, of them, those where the
    greedy symbol is a valid continuation; for the model (``dfa_accuracy_by_k``, argmax over the
    vocabulary) and the in-context n-gram predictors (``baseline_ngram{n}_by_k``)."""
    inputs = batch["inputs"]
    k = ((inputs == task.delimiter).cumsum(dim=1) - 1)[mask]
    valid = F.pad(task.valid_next(batch)[mask], (0, logits.shape[1] - task.num_letters - 1))
    ngrams = in_context_ngrams(inputs, batch["targets"], ORDERS, task.num_letters + 1)
    greedy = {"dfa_accuracy": logits.argmax(dim=-1),
              **{f"baseline_ngram{n}": q.argmax(dim=-1) for n, q in ngrams.items()}}
    counts = torch.bincount(k, minlength=task.max_strings)
    return {f"{name}_by_k": (torch.bincount(k, weights=valid.gather(1, g[:, None])[:, 0].double(),
                                            minlength=task.max_strings), counts)
            for name, g in greedy.items()}


def render(tokens: list[int], task) -> str:
    """Tokens as text: letters a, b, c ... (ids when there are more than 26), ``|`` for the delimiter."""
    def symbol(t: int) -> str:
        if t == task.delimiter:
            return " | "
        if 0 <= t < task.num_letters:
            return chr(ord("a") + t) if task.num_letters <= 26 else f" {t} "
        return " <pad> " if t == task.pad else f" <{t}> "

    text = " ".join("".join(symbol(t) for t in tokens).split())
    return text or "(empty)"


def _verdict(accepted: bool, ended: bool) -> str:
    return "accepted" if accepted else ("rejected" if ended else "unfinished")


@register_evaluator("dfa")
def evaluate_dfa(model: nn.Module, task, data: dict, settings: Settings) -> dict:
    result = evaluate_tokens(model, task, data, settings, accuracy_by_string)
    totals = Totals()
    gen = generator(derive_seed(settings.seed, "dfa sampling"), settings.device)
    ngram_gen = generator(derive_seed(settings.seed, "dfa n-gram sampling"), settings.device)
    max_new = task.max_length + 1
    samples, seen = [], 0
    for batch in batches(data, settings):
        inputs, n = batch["inputs"], batch["inputs"].shape[0]
        start = last_string_start(inputs, task.delimiter)
        temperature = torch.tensor([0.0] * n + [settings.temperature] * n, device=inputs.device)
        tokens, count = continue_prefixes(model, inputs.repeat(2, 1), start.repeat(2), max_new, task.delimiter,
                                          temperature, gen)
        accepted, ended, letters = walk(batch["transitions"].repeat(2, 1, 1), tokens, count, task.delimiter)
        _add_generation(totals, "", accepted, ended, letters, n)
        for order in ORDERS:
            ngram = ngram_continuations(inputs.repeat(2, 1), start.repeat(2), order, task.num_letters + 1, max_new,
                                        task.delimiter, temperature, ngram_gen)
            _add_generation(totals, f"ngram{order}_",
                            *walk(batch["transitions"].repeat(2, 1, 1), *ngram, task.delimiter), n)
        end = (inputs != task.pad).sum(dim=1)
        totals.add({"reference/mean_length": ((end - start).sum(), n)})
        for j in range(min(n, settings.samples - len(samples))):
            samples.append({"example": seen + j,
                            **_sample(task, batch, j, start[j], end[j], tokens, count, accepted, ended, n)})
        seen += n
    values = totals.scalars()

    def outcomes(prefix: str) -> dict:
        return {mode: {k: values[f"{prefix}{mode}/{k}"] for k in ("accepted", "unfinished", "mean_length")}
                for mode in MODES}

    generation = {"prefixes": int(totals.sums["greedy/accepted"][1]), "max_letters": task.max_length,
                  "temperature": settings.temperature, **outcomes(""),
                  "reference_mean_length": values["reference/mean_length"],
                  **{f"ngram{order}": outcomes(f"ngram{order}_") for order in ORDERS}}
    metrics = result["metrics"]
    for mode in MODES:
        metrics[f"{mode}_accepted"] = generation[mode]["accepted"]
        for order in ORDERS:
            metrics[f"ngram{order}_{mode}_accepted"] = generation[f"ngram{order}"][mode]["accepted"]
    result["generation"] = generation
    result["files"].append(_plot(settings, task, metrics))
    if samples:
        (settings.out / "samples.txt").write_text(_samples_text(samples, settings))
        result["files"].append("samples.txt")
        result["samples"] = [{"example": str(s["example"]), "reference": s["reference"],
                              **{mode: f"{s[mode]} ({s[mode + '_verdict']})" for mode in MODES}} for s in samples]
    return result


def _add_generation(totals: Totals, prefix: str, accepted, ended, letters, n: int) -> None:
    """Add the outcomes of ``2n`` continuations, the first ``n`` greedy, the others sampled."""
    for i, mode in enumerate(MODES):
        part = slice(i * n, (i + 1) * n)
        totals.add({f"{prefix}{mode}/accepted": (accepted[part].sum(), n),
                    f"{prefix}{mode}/unfinished": ((~ended[part]).sum(), n),
                    f"{prefix}{mode}/mean_length": ((letters[part] * ended[part]).sum(), ended[part].sum())})


def _sample(task, batch: dict, j: int, start, end, tokens, count, accepted, ended, n: int) -> dict:
    inputs = batch["inputs"][j].tolist()
    start, end = int(start), int(end)
    sample = {"states": int((batch["transitions"][j] >= 0).any(dim=-1).sum()),
              "strings": inputs[:start].count(task.delimiter) - 1,
              "context": render(inputs[:start], task), "reference": render(inputs[start:end], task)}
    for i, mode in enumerate(MODES):
        row = i * n + j
        generated = tokens[row, :int(count[row]) - int(ended[row])].tolist()
        sample[mode] = render(generated, task)
        sample[mode + "_verdict"] = _verdict(bool(accepted[row]), bool(ended[row]))
    return sample


def _samples_text(samples: list[dict], settings: Settings) -> str:
    lines = [f"Continuations of test prefixes: greedy, and sampled at temperature {settings.temperature}.",
             "A string is accepted when it ends and the automaton has an edge for each of its letters.", ""]
    for s in samples:
        strings = f"{s['strings']} string{'' if s['strings'] == 1 else 's'}"
        lines += [f"example {s['example']}: an automaton of {s['states']} states, {strings} in context",
                  f"  context:   {s['context']}",
                  f"  reference: {s['reference']}",
                  *(f"  {mode + ':':<10} {s[mode]}  ({s[mode + '_verdict']})" for mode in MODES), ""]
    return "\n".join(lines)


def _plot(settings: Settings, task, metrics: dict) -> str:
    def three(name: str) -> dict:
        return {"model": metrics[name], **{f"{n}-gram": metrics[f"ngram{n}_{name}"] for n in ORDERS}}

    return bar_panels(settings.out / "dfa_metrics.png",
                      {"dfa accuracy (teacher-forced)": three("dfa_accuracy"), "TVD (teacher-forced)": three("tvd"),
                       "greedy strings accepted": three("greedy_accepted"),
                       f"sampled strings accepted (T={settings.temperature:g})": three("sampled_accepted")},
                      f"{task.name}: the model and in-context n-grams, teacher-forced and generating")
