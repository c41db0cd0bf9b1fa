"""Model soups: which trials each soup takes, and that the weights are their element-wise mean."""
from __future__ import annotations

from pathlib import Path

import torch

from search.soups import Ingredient, average, greedy_soup, uniform_soup
from trainables.checkpoint import WEIGHTS, save_weights


def _ingredient(tmp_path: Path, name: str, id_val: float, value: float) -> Ingredient:
    folder = tmp_path / name
    folder.mkdir()
    save_weights(folder / WEIGHTS, {"w": torch.full((2, 3), value), "step": torch.tensor(7)})
    return Ingredient(name, id_val, folder)


def test_average_is_elementwise_mean_and_keeps_integer_tensors():
    states = [{"w": torch.tensor([1.0, 3.0]), "n": torch.tensor(5)},
              {"w": torch.tensor([3.0, 5.0]), "n": torch.tensor(9)}]
    out = average(states)
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0]))
    assert out["n"].item() == 5                     # non-float tensors: taken from the first


def test_uniform_soup_takes_the_top_k_by_id_val(tmp_path):
    ings = [_ingredient(tmp_path, "a", 80.0, 1.0), _ingredient(tmp_path, "b", 90.0, 3.0),
            _ingredient(tmp_path, "c", 85.0, 5.0)]
    ids, state = uniform_soup(ings, top_k=2)
    assert ids == ["b", "c"]
    assert torch.allclose(state["w"], torch.full((2, 3), 4.0))


def test_greedy_soup_keeps_only_ingredients_that_do_not_lower_id_val(tmp_path):
    ings = [_ingredient(tmp_path, "a", 90.0, 1.0), _ingredient(tmp_path, "b", 85.0, 9.0),
            _ingredient(tmp_path, "c", 80.0, 2.0)]
    # ID val of a soup (stand-in): best when the weight is near 1.5; "b" pulls it away.
    seen = []

    def id_val_of(state):
        seen.append(float(state["w"].mean()))
        return 100.0 - abs(float(state["w"].mean()) - 1.5)

    ids, state, score = greedy_soup(ings, id_val_of)
    assert ids == ["a", "c"]                         # b rejected, c kept (1.5 beats 1.0)
    assert torch.allclose(state["w"], torch.full((2, 3), 1.5))
    assert score == 100.0
    assert seen == [1.0, 5.0, 1.5]                   # best-first: a, a+b, a+c
