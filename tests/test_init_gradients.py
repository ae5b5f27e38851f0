"""scripts/init_gradients.py: ReLA's per-head RMSNorm amplifies the early blocks' gradients at
initialisation, by an amount its ``norm_eps`` controls (REPRODUCTION.md, row 7)."""

import pytest

from helpers import load_script


@pytest.fixture(scope="module")
def init_gradients():
    return load_script("scripts/init_gradients.py")


def test_mixer_specs_parse_numbers_in_any_notation(init_gradients):
    assert init_gradients.parse_mixer("rela:norm_eps=1e-2,gate=false") == ("rela", {"norm_eps": 0.01, "gate": False})
    assert init_gradients.parse_mixer("attention:n_kv_heads=1") == ("attention", {"n_kv_heads": 1})


def test_rela_norm_amplifies_early_gradients_and_eps_damps_it(init_gradients):
    def first_mixer(**kw):
        mixer = {"name": kw.pop("name", "rela"), "n_heads": 8, "positions": "none", **kw}
        return init_gradients.gradient_norms(mixer, n_layers=4)["first_mixer"]

    softmax, rela, damped = first_mixer(name="attention"), first_mixer(), first_mixer(norm_eps=1.0)
    assert rela > 3 * softmax
    assert damped < rela / 2
