"""The data-free recipes and the size-budget allocator, on synthetic weights (no model, seconds).

What must hold whatever the weights: codes lie in the scheme's range and pack (the kernel
refuses anything else); ``clip`` never leaves more error than round to nearest under its own
error weighting (its grid holds RTN's range); ``hqq`` refuses symmetric schemes; a recipe's
values do not depend on how the tensor is chunked (streaming); the budget allocator stays
within its bytes and its summed error never grows with the budget.
"""

from __future__ import annotations

import numpy as np
import pytest

import phi_quant.quant as q
from phi_quant.errors import BadInputError, UnsupportedPrecisionError
from phi_quant.quant import encode as enc
from phi_quant.quant.budget import Candidate, allocate
from phi_quant.quant.recipes import RecipeContext, get_recipe, recipe_names
from phi_quant.quant.recipes.blocks import as_blocks, element_weights, weighted_error
from phi_quant.quant.recipes.clip import Clip
from phi_quant.quant.scheme import Scheme
from phi_quant.quant.values import dequantize, dequantize_values, pack, rtn_values

SCHEMES = [Scheme.ggml("Q4_0"), Scheme.ggml("Q4_1"), Scheme.ggml("Q8_0"), Scheme.matmulnbits(4, 32, True),
           Scheme.matmulnbits(4, 64, False, "f16"), Scheme.matmulnbits(8, 128, False), Scheme.mlx(4, 64, "f16"),
           Scheme.mlx(8, 32, "bf16"), Scheme.nncf(4, False, 128), Scheme.nncf(4, True, 32), Scheme.nncf(8, False, None)]


@pytest.fixture(scope="module")
def w() -> np.ndarray:
    """Heavy-tailed rows (Student t, 3 degrees of freedom) with a few large outliers, K not a
    multiple of 128 (a partial MatMulNBits block)."""
    rng = np.random.default_rng(5)
    x = (rng.standard_t(3, size=(24, 320)) * 0.02).astype(np.float32)
    x[3, 17] = 0.9
    x[10, 200] = -1.2
    return x


def _error(x: np.ndarray, values, scheme: Scheme, weighting: str) -> float:
    blocks, imp = as_blocks(x, scheme, None)
    recon, _ = as_blocks(dequantize_values(values, scheme).reshape(x.shape), scheme, None)
    return float(weighted_error(blocks, recon, element_weights(blocks, imp, weighting)).sum())


def _fits(scheme: Scheme, k: int) -> bool:
    return k % scheme.group_of(k) == 0 or scheme.layout == "matmulnbits"


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
@pytest.mark.parametrize("name", ["clip", "hqq"])
def test_recipe_codes_pack_and_lower_the_error_where_they_apply(w, scheme, name):
    k = 320 if _fits(scheme, 320) else 256
    x = np.ascontiguousarray(w[:, :k])
    recipe = get_recipe(name)
    if recipe.refusal(scheme):
        assert name == "hqq" and scheme.zero_kind == "fixed"
        with pytest.raises(UnsupportedPrecisionError, match="symmetric"):
            enc.check_recipe(name, scheme, "t")
        return
    values = recipe.values(x, scheme, RecipeContext())
    lo, hi = scheme.code_range()
    assert values.codes.min() >= lo and values.codes.max() <= hi
    base = rtn_values(x, scheme)
    if name == "clip":
        assert _error(x, values, scheme, recipe.weighting) <= _error(x, base, scheme, recipe.weighting) * (1 + 1e-6)
    if q.native_available():
        arrays = pack(values, scheme)
        np.testing.assert_array_equal(dequantize(arrays, scheme, x.shape), dequantize_values(values, scheme).reshape(x.shape))


def test_clip_lowers_the_plain_squared_error_on_heavy_tails(w):
    """With the unweighted error the range search is free to clip an outlier; on heavy-tailed
    groups of 32 it removes a measurable share of RTN's squared error (5 % here)."""
    scheme = Scheme.ggml("Q4_0")
    x = np.ascontiguousarray(w[:, :256])
    plain = Clip(weighting="none").values(x, scheme, RecipeContext())
    assert _error(x, plain, scheme, "none") < 0.97 * _error(x, rtn_values(x, scheme), scheme, "none")


def test_values_do_not_depend_on_row_chunks(w, monkeypatch):
    scheme = Scheme.mlx(4, 64, "f16")
    x = np.ascontiguousarray(w[:, :256])
    whole = enc.recipe_values(x, "f32", scheme, get_recipe("clip"), RecipeContext())
    monkeypatch.setattr(enc, "RECIPE_CHUNK_ELEMENTS", 3 * 256)  # 3 rows at a time
    chunked = enc.recipe_values(x, "f32", scheme, get_recipe("clip"), RecipeContext())
    for a, b in ((whole.codes, chunked.codes), (whole.scales, chunked.scales), (whole.zeros, chunked.zeros)):
        np.testing.assert_array_equal(a, b)


def test_unknown_recipe_and_weighting_are_refused():
    with pytest.raises(BadInputError, match=", ".join(recipe_names())):
        get_recipe("gptq-please")
    with pytest.raises(ValueError, match="weighting"):
        Clip(weighting="cubic").values(np.ones((1, 32), np.float32), Scheme.ggml("Q4_0"), RecipeContext())


def test_native_types_are_left_to_the_vendor_quantizer():
    native = Scheme.native("Q6_K", (256, 210), 6)
    assert "vendor's own quantizer" in get_recipe("clip").refusal(native)
    assert enc.check_recipe("rtn", native).name == "rtn"


def _cands(errors: list[tuple[int, float]]) -> list[Candidate]:
    return [Candidate(Scheme.ggml("Q4_0"), b, e) for b, e in errors]


def test_allocate_spends_bytes_where_the_error_falls_most_and_stays_within_budget():
    tensors = [("a", _cands([(100, 10.0), (200, 1.0), (400, 0.5)])),
               ("b", _cands([(100, 2.0), (200, 1.5), (400, 0.1)]))]
    assert {n: c.nbytes for n, c in allocate(tensors, 300).items()} == {"a": 200, "b": 100}
    last = None
    for budget in (200, 300, 400, 500, 600, 700, 800):
        chosen = allocate(tensors, budget)
        assert sum(c.nbytes for c in chosen.values()) <= budget
        total = sum(c.error for c in chosen.values())
        assert last is None or total <= last
        last = total
    with pytest.raises(UnsupportedPrecisionError, match="ask for more bits per weight"):
        allocate(tensors, 150)
