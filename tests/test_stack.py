"""The block stack the backbones share keeps the checkpoint layout they had before sharing it."""

import pytest
import torch

from seqicl.models import BlockStack
from seqicl.models.autoencoder import AutoEncoder
from seqicl.models.continuous import ContinuousModel
from seqicl.models.lm import TokenLM

BLOCK = ["pos_embed.weight", "blocks.0.mixer.q_proj.weight", "blocks.0.mixer.kv_proj.weight",
         "blocks.0.mixer.out_proj.weight", "blocks.0.state_mixer.fc1.weight", "blocks.0.state_mixer.fc1.bias",
         "blocks.0.state_mixer.fc2.weight", "blocks.0.state_mixer.fc2.bias", "blocks.0.norm1.weight",
         "blocks.0.norm1.bias", "blocks.0.norm2.weight", "blocks.0.norm2.bias", "norm.weight", "norm.bias"]
LAYOUTS = {
    "token_lm": (lambda: TokenLM(7, 8, d_model=4, n_layers=1, positions="learned"),
                 ["embed.weight", *BLOCK, "head.weight"]),
    "continuous": (lambda: ContinuousModel(3, 8, d_model=4, n_layers=1, positions="learned"),
                   ["read_in.weight", "read_in.bias", *BLOCK, "read_out.weight", "read_out.bias"]),
    "autoencoder": (lambda: AutoEncoder(7, 8, d_model=4, n_layers=1, positions="learned"),
                    ["aggregate", "embed.weight", *BLOCK, "decoder_pos.weight", "decoder_norm_in.weight",
                     "decoder_norm_in.bias", "decoder.fc1.weight", "decoder.fc1.bias", "decoder.fc2.weight",
                     "decoder.fc2.bias", "decoder_norm.weight", "decoder_norm.bias", "head.weight"]),
}


@pytest.mark.parametrize("backbone", sorted(LAYOUTS))
def test_parameters_keep_their_names_and_order(backbone):
    """Checkpoints name the weights (state_dict) and store the optimizer's state by parameter
    position: both must be those of the backbones written before the shared stack."""
    build, expected = LAYOUTS[backbone]
    model = build()
    assert isinstance(model, BlockStack)
    assert list(model.state_dict()) == expected
    assert [name for name, _ in model.named_parameters()] == expected
    weights = {name: torch.full_like(value, 0.5) for name, value in model.state_dict().items()}
    fresh = build()
    fresh.load_state_dict(weights)
    assert all(torch.equal(value, weights[name]) for name, value in fresh.state_dict().items())
