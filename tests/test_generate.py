"""``python -m generate``: restoring a checkpoint, evaluating, generating, and incremental decoding."""

import pytest
import torch

from seqicl.models.lm import TokenLM

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
