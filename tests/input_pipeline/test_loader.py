"""The training loader across epoch boundaries, measured structurally (iterators built, worker processes, batches
in flight), on upstream's real video Dataset with 2 and 50 smoke clips, through loader_probe.py, which loops the
way ImaginaireTrainer.train does."""

from __future__ import annotations

from collections import Counter

from .conftest import probe


def _epochs(names: list[str], n: int) -> list[list[str]]:
    return [names[i:i + n] for i in range(0, len(names) - n + 1, n)]


def test_upstream_loader_restarts_workers_every_epoch(data_tree, clips2):
    # the control: what the endless loader removes (if this stops failing upstream, the test below proves nothing)
    r = probe(data_tree, clips2, "--workers", "2", "--batches", "6", "--loader", "upstream")
    assert r["iter_calls"] == 3  # a new iterator per epoch of 2 clips
    assert len(set(r["pids"])) > 2  # ... and new worker processes with it
    assert r["ahead"][1] == 0  # nothing is requested past the last batch of an epoch


def test_endless_loader_two_clips(data_tree, clips2):
    r = probe(data_tree, clips2, "--workers", "2", "--batches", "8", "--loader", "endless")
    assert r["iter_calls"] == 1, r  # one iterator for the whole run
    assert len(set(r["pids"])) <= 2, r  # the same two workers throughout
    assert r["epoch_len"] == 2  # len() is still one epoch
    # at every epoch's last batch the next epoch's batches are already requested (prefetch across the boundary)
    assert all(r["ahead"][i] >= 1 for i in range(1, 8, 2)), r
    for ep in _epochs(r["names"], 2):  # every epoch sees every clip once
        assert sorted(ep) == sorted(set(r["names"])), r
    assert r["shapes"] == [["torch.uint8", [1, 3, 13, 64, 64]]]


def test_endless_loader_fifty_clips(data_tree, clips50):
    r = probe(data_tree, clips50, "--workers", "2", "--batches", "150", "--loader", "endless")
    assert r["iter_calls"] == 1 and len(set(r["pids"])) <= 2, r
    epochs = _epochs(r["names"], 50)
    assert len(epochs) == 3 and all(len(set(ep)) == 50 for ep in epochs)
    assert Counter(r["names"]) == Counter({n: 3 for n in set(r["names"])})
    assert len({tuple(ep) for ep in epochs}) == 3  # set_epoch: a new order each epoch (upstream repeats epoch 0's)
    assert r["ahead"][49] >= 1 and r["ahead"][99] >= 1


def test_upstream_loader_mode_kept_on_request(data_tree, clips2):
    r = probe(data_tree, clips2, "--workers", "0", "--batches", "4", "--loader", "endless",
              env={"COSMOS_LOADER": "upstream"})
    assert r["iter_calls"] == 2  # COSMOS_LOADER=upstream: the loader is left as configured
