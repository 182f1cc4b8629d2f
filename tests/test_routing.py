"""Routing functions (paper §3, Eqs. 3–6, Table 6, Table 8; DESIGN §4) against independent formulas.

The references below are written without the library's helpers: einsum for the sums over the L_v visual rows
and the rank dimension, an explicit (r × r) x''_v for ``expand``, and a plain loop for ``proj``.
"""

from __future__ import annotations

import pytest
import torch

from vlrouting.errors import ConfigError
from vlrouting.routing import ROUTING_FUNCTIONS, ROUTING_MIXES, TASKS, list_routings, resolve_routing, route

pytestmark = pytest.mark.usefixtures("single_thread")

# ---------------------------------------------------------------------------------------------------------------
# Independent reference formulas: x_t (B, L_t, r), x_v (B, L_v, r) -> (B, L_t, r)
# ---------------------------------------------------------------------------------------------------------------


def ref_none(x_t, x_v):
    return x_t


def ref_mul(x_t, x_v):
    # out[b,i,k] = x_t[b,i,k] * Σ_j x_v[b,j,k]
    return torch.einsum("bik,bjk->bik", x_t, x_v)


def ref_add(x_t, x_v):
    out = torch.empty_like(x_t)
    for b in range(x_t.shape[0]):
        s = sum(x_v[b, j] for j in range(x_v.shape[1]))
        for i in range(x_t.shape[1]):
            out[b, i] = x_t[b, i] + s
    return out


def ref_proj(x_t, x_v):
    # out[b,i,:] = Σ_j (x_t[b,i] · x_v[b,j]) x_v[b,j]
    return torch.einsum("bik,bjk,bjl->bil", x_t, x_v, x_v)


def ref_proj_loop(x_t, x_v):
    out = torch.zeros_like(x_t)
    for b in range(x_t.shape[0]):
        for i in range(x_t.shape[1]):
            for j in range(x_v.shape[1]):
                out[b, i] += torch.dot(x_t[b, i], x_v[b, j]) * x_v[b, j]
    return out


def ref_expand(x_t, x_v):
    # rowsum(x_t) ⊗ Σ_v x_v
    return torch.einsum("bik,bjl->bil", x_t, x_v)


def ref_expand_matrix(x_t, x_v):
    """x_t @ x''_v with x''_v built explicitly: the (r, r) matrix whose every row is Σ_v x_v (footnote 7)."""
    r = x_t.shape[-1]
    out = []
    for b in range(x_t.shape[0]):
        s = x_v[b].sum(0)  # (r,)
        x_pp = torch.stack([s] * r, dim=0)  # (r, r), row k = Σ_v x_v
        assert torch.equal(x_pp[0], x_pp[-1])
        out.append(x_t[b] @ x_pp)
    return torch.stack(out)


def ref_proj_relu(x_t, x_v):
    # relu(x_t) relu(x_v)ᵀ x_v — the last factor is not rectified (Table 6)
    return torch.einsum("bik,bjk,bjl->bil", x_t.clamp(min=0), x_v.clamp(min=0), x_v)


REFERENCE = {
    "none": ref_none,
    "mul": ref_mul,
    "add": ref_add,
    "proj": ref_proj,
    "expand": ref_expand,
    "proj_relu": ref_proj_relu,
}

# Second, structurally different references where the brief asks for one.
ALTERNATIVE = {"proj": ref_proj_loop, "expand": ref_expand_matrix}


def _rand(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


# ---------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------


def test_registry_lists_the_paper_functions_and_every_one_has_a_reference():
    assert set(ROUTING_FUNCTIONS) == {"none", "mul", "add", "proj", "expand", "proj_relu"}
    assert list_routings() == ROUTING_FUNCTIONS
    # A newly registered routing function must come with a reference formula in this file.
    assert set(REFERENCE) == set(ROUTING_FUNCTIONS)


def test_routing_mixes_equal_table_8():
    assert ROUTING_MIXES == {
        "comb1": {"vqa": "mul", "gqa": "mul", "nlvr": "proj", "caption": "expand"},
        "comb2": {"vqa": "add", "gqa": "add", "nlvr": "proj", "caption": "expand"},
        "comb3": {"vqa": "mul", "gqa": "mul", "nlvr": "mul", "caption": "expand"},
        "comb4": {"vqa": "add", "gqa": "add", "nlvr": "mul", "caption": "expand"},
    }
    assert TASKS == ("vqa", "gqa", "nlvr", "caption")


# ---------------------------------------------------------------------------------------------------------------
# Formulas on random tensors
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("l_v", [1, 4])
@pytest.mark.parametrize("name", ["none", "mul", "add", "proj", "expand", "proj_relu"])
def test_route_matches_reference_formula(name, l_v):
    x_t = _rand(3, 5, 7, seed=1)
    x_v = _rand(3, l_v, 7, seed=2)
    out = route(name, x_t, x_v)
    assert out.shape == x_t.shape
    torch.testing.assert_close(out, REFERENCE[name](x_t, x_v), rtol=1e-10, atol=1e-10)
    if name in ALTERNATIVE:
        torch.testing.assert_close(out, ALTERNATIVE[name](x_t, x_v), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("l_v", [1, 4])
def test_route_float32_matches_float64_reference(l_v):
    x_t, x_v = _rand(2, 3, 8, seed=3), _rand(2, l_v, 8, seed=4)
    for name in ROUTING_FUNCTIONS:
        out = route(name, x_t.float(), x_v.float())
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), REFERENCE[name](x_t, x_v), rtol=1e-4, atol=1e-4)


def test_proj_with_one_visual_row_is_inner_product_times_x_v():
    x_t, x_v = _rand(2, 4, 6, seed=5), _rand(2, 1, 6, seed=6)
    inner = (x_t * x_v).sum(-1, keepdim=True)  # ⟨x_t[b,i], x_v[b]⟩, (B, L_t, 1)
    torch.testing.assert_close(route("proj", x_t, x_v), inner * x_v, rtol=1e-12, atol=1e-12)


def test_pooled_routings_only_see_the_sum_over_visual_rows():
    """mul/add/expand use Σ_v x_v (footnote 7): L_v rows and their sum as one row give the same result."""
    x_t, x_v = _rand(2, 4, 6, seed=7), _rand(2, 3, 6, seed=8)
    summed = x_v.sum(1, keepdim=True)
    for name in ("mul", "add", "expand"):
        torch.testing.assert_close(route(name, x_t, x_v), route(name, x_t, summed))
    # proj is not a function of the sum alone (a true transpose, not the released code's reshape)
    assert not torch.allclose(route("proj", x_t, x_v), route("proj", x_t, summed))


# ---------------------------------------------------------------------------------------------------------------
# Hand-computed numeric examples (integers, expected values written out by hand)
# ---------------------------------------------------------------------------------------------------------------

# x_t = [[1, -2], [3, 4]] (L_t = 2, r = 2); x_v = [[1, 0], [2, -1]] (L_v = 2), so Σ_v x_v = [3, -1].
X_T = torch.tensor([[[1.0, -2.0], [3.0, 4.0]]])
X_V = torch.tensor([[[1.0, 0.0], [2.0, -1.0]]])
HAND = {
    "none": [[1, -2], [3, 4]],
    "mul": [[3, 2], [9, -4]],  # x_t ⊙ [3, -1]
    "add": [[4, -3], [6, 3]],  # x_t + [3, -1]
    # x_t x_vᵀ = [[1, 4], [3, 2]];  @ x_v = [[1·[1,0] + 4·[2,-1]], [3·[1,0] + 2·[2,-1]]]
    "proj": [[9, -4], [7, -2]],
    # rowsum(x_t) = [-1, 7];  ⊗ [3, -1]
    "expand": [[-3, 1], [21, -7]],
    # relu(x_t) = [[1, 0], [3, 4]], relu(x_v) = [[1, 0], [2, 0]];  relu(x_t) relu(x_v)ᵀ = [[1, 2], [3, 6]];  @ x_v
    "proj_relu": [[5, -2], [15, -6]],
}

# One visual row x_v = [[2, 1]]: ⟨x_t rows, x_v⟩ = [0, 10].
X_V1 = torch.tensor([[[2.0, 1.0]]])
HAND_LV1 = {
    "none": [[1, -2], [3, 4]],
    "mul": [[2, -2], [6, 4]],
    "add": [[3, -1], [5, 5]],
    "proj": [[0, 0], [20, 10]],
    "expand": [[-2, -1], [14, 7]],  # rowsum = [-1, 7]
    "proj_relu": [[4, 2], [20, 10]],  # relu(x_t)·relu(x_v) = [1·2 + 0·1, 3·2 + 4·1] = [2, 10] (relu kills the -2)
}


@pytest.mark.parametrize("name", list(HAND))
def test_hand_computed_example(name):
    assert torch.equal(route(name, X_T, X_V), torch.tensor([HAND[name]], dtype=torch.float32))
    assert torch.equal(route(name, X_T, X_V1), torch.tensor([HAND_LV1[name]], dtype=torch.float32))


def test_hand_examples_cover_every_registered_function():
    assert set(HAND) == set(ROUTING_FUNCTIONS) == set(HAND_LV1)


# ---------------------------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("l_v", [1, 3])
@pytest.mark.parametrize("name", ["none", "mul", "add", "proj", "expand", "proj_relu"])
def test_gradients_flow_to_x_t_and_x_v(name, l_v):
    x_t = _rand(2, 3, 5, seed=9).requires_grad_(True)
    x_v = _rand(2, l_v, 5, seed=10).requires_grad_(True)
    w = _rand(2, 3, 5, seed=11)
    (route(name, x_t, x_v) * w).sum().backward()
    assert x_t.grad is not None and x_t.grad.abs().sum() > 0
    if name == "none":
        assert x_v.grad is None or not x_v.grad.any()
    else:
        assert x_v.grad is not None and x_v.grad.abs().sum() > 0
        if name != "proj_relu":  # ReLU may legitimately cut a whole example off; the others never do
            assert (x_v.grad.abs().sum(-1) > 0).all(), "every visual row should receive gradient"


@pytest.mark.parametrize("name", ["mul", "add", "proj", "expand", "proj_relu"])
def test_gradients_match_finite_differences(name):
    x_t = _rand(2, 3, 4, seed=12).requires_grad_(True)
    x_v = _rand(2, 2, 4, seed=13).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: route(name, a, b), (x_t, x_v))


# ---------------------------------------------------------------------------------------------------------------
# Errors and resolution of routing specs
# ---------------------------------------------------------------------------------------------------------------


def test_unknown_routing_name_raises_value_error_listing_valid_names():
    with pytest.raises(ValueError) as err:
        route("projection", _rand(1, 2, 3), _rand(1, 1, 3))
    assert isinstance(err.value, ConfigError)
    msg = str(err.value)
    assert "projection" in msg
    for name in ROUTING_FUNCTIONS:
        assert name in msg


def test_route_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="batch and rank"):
        route("mul", _rand(2, 3, 4), _rand(3, 1, 4))
    with pytest.raises(ValueError, match="batch and rank"):
        route("mul", _rand(2, 3, 4), _rand(2, 1, 5))
    with pytest.raises(ValueError, match=r"\(B, L_t, r\)"):
        route("mul", _rand(2, 4), _rand(2, 1, 4))


def test_resolve_routing_name_mix_and_dict():
    assert resolve_routing("proj", ["vqa", "caption"]) == {"vqa": "proj", "caption": "proj"}
    for mix, table in ROUTING_MIXES.items():
        assert resolve_routing(mix) == table
    assert resolve_routing({"a": "mul", "b": "none"}, ["a", "b"]) == {"a": "mul", "b": "none"}


@pytest.mark.parametrize("spec", ["comb9", "Mul", "relu"])
def test_resolve_routing_unknown_name_or_mix_names_the_valid_ones(spec):
    with pytest.raises(ConfigError) as err:
        resolve_routing(spec)
    msg = str(err.value)
    assert spec in msg
    for name in list(ROUTING_FUNCTIONS) + list(ROUTING_MIXES):
        assert name in msg


def test_resolve_routing_dict_errors():
    with pytest.raises(ConfigError, match="gqa"):
        resolve_routing({"vqa": "mul"}, ["vqa", "gqa"])
    with pytest.raises(ConfigError, match="valid routing functions") as err:
        resolve_routing({"vqa": "bogus"}, ["vqa"])
    assert "bogus" in str(err.value)
    with pytest.raises(ConfigError, match="no entry for task"):
        resolve_routing("comb1", ["vqa", "retrieval"])  # a mix only covers the four paper tasks
