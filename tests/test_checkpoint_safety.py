"""Trainer checkpoints load with torch.load(weights_only=True) (issue 14): RNG state is saved in
a safe form and restores exactly; a checkpoint file carrying a pickled object that would run
code is refused with one clear error, and the code does not run."""

import os
import pickle
import random

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

from trainer.sft import SFTError, load_tensors_only, rng_state, set_rng_state  # noqa: E402


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # a cached gaussian is part of numpy's state too
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.random(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_tensors_only(tmp_path / "rng.pt"))
    assert (random.random(), np.random.random(), torch.rand(1).item()) == expected


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "rng-rank0.pt"
    with open(evil, "wb") as handle:
        pickle.dump({"python": _Payload()}, handle)
    with pytest.raises(SFTError, match="rng-rank0.pt: not loading this checkpoint file"):
        load_tensors_only(evil)
    assert not (tmp_path / "PWNED").exists()
    # A numpy array (the old RNG format) is refused as well: weights_only means tensors.
    torch.save({"numpy": np.zeros(3)}, tmp_path / "old.pt")
    with pytest.raises(SFTError, match="old.pt"):
        load_tensors_only(tmp_path / "old.pt")
