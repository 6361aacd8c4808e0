"""portable/param_sets.py: GradClip's per-step choice of gradients (the net's, when they are all the model's) from
module walks kept between steps, with the answer of walking both modules at every call, whatever changes."""

from __future__ import annotations

import gc
import importlib
import weakref

import pytest
import torch


def _walk(model, net):
    """What upstream's GradClip computed at every step (two module walks)."""
    params = [p for p in net.parameters() if p.grad is not None]
    if len(params) != sum(p.grad is not None for p in model.parameters()):
        return None
    return params


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(6)])
        self.net_ema = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(6)]).requires_grad_(False)


def _backward(model):
    model.net(torch.randn(2, 4)).sum().backward()


def _same(a, b):
    return (a is None and b is None) or (a is not None and b is not None and [id(p) for p in a] == [id(p) for p in b])


@pytest.fixture
def ps(portable):
    mod = importlib.import_module(portable.__name__ + ".param_sets")
    mod.forget()
    yield mod
    mod.forget()


def test_answer_is_the_walks_through_changes(ps):
    m = _Model()
    net = m.net
    assert ps.net_grad_params(m, net) == [] and _walk(m, net) == []  # before any backward
    _backward(m)
    assert _same(ps.net_grad_params(m, net), _walk(m, net)) and len(_walk(m, net)) == 12
    net[2].weight.grad = None  # a gradient set to None (requires_grad off, zero_grad(set_to_none))
    assert _same(ps.net_grad_params(m, net), _walk(m, net)) and len(_walk(m, net)) == 11
    m.net_ema[0].weight.grad = torch.zeros(4, 4)  # a gradient outside the net: upstream's path (None)
    assert ps.net_grad_params(m, net) is None and _walk(m, net) is None
    m.net_ema[0].weight.grad = None
    net[0].extra = torch.nn.Parameter(torch.ones(3))  # a parameter registered after the lists were kept
    net[0].extra.grad = torch.ones(3)
    assert _same(ps.net_grad_params(m, net), _walk(m, net)) and any(p is net[0].extra for p in _walk(m, net))
    net.add_module("adapter", torch.nn.Linear(4, 2))  # a submodule (a LoRA adapter set up later)
    net.adapter.weight.grad = torch.ones(2, 4)
    assert _same(ps.net_grad_params(m, net), _walk(m, net)) and any(p is net.adapter.weight for p in _walk(m, net))
    other = torch.nn.Linear(4, 4)  # a net that is not the model's: its gradients are not all the model has
    other.weight.grad = torch.ones(4, 4)
    assert ps.net_grad_params(m, other) is None and _walk(m, other) is None
    assert _same(ps.net_grad_params(m, net), _walk(m, net))  # back to the model's own net


def test_walks_once_while_nothing_is_registered(ps, monkeypatch):
    m = _Model()
    _backward(m)
    walks = []
    real = torch.nn.Module.parameters
    monkeypatch.setattr(torch.nn.Module, "parameters", lambda self, recurse=True: walks.append(self) or real(self, recurse))
    for _ in range(5):  # five steps
        assert len(ps.net_grad_params(m, m.net)) == 12
    assert len(walks) == 2, walks  # the first step's two walks, none after
    m.net.add_module("late", torch.nn.Linear(4, 4))
    ps.net_grad_params(m, m.net)
    assert len(walks) == 4  # a registration: walked again
    ps.forget()
    ps.net_grad_params(m, m.net)
    assert len(walks) == 6


def test_kept_lists_do_not_keep_a_deleted_model_alive(ps):
    m = _Model()
    _backward(m)
    ps.net_grad_params(m, m.net)
    w = weakref.ref(m.net[0].weight)
    del m
    gc.collect()
    assert w() is None and not ps._cache


def test_module_parameters_kept_until_a_registration_and_freed_with_the_module(ps, monkeypatch):
    """parameters(module), for the EMA update's pairing: the walk's list, kept per module until a module or
    parameter is registered anywhere; a deleted module's parameters are not kept alive."""
    m = _Model()
    walks = []
    real = torch.nn.Module.parameters
    monkeypatch.setattr(torch.nn.Module, "parameters", lambda self, recurse=True: walks.append(self) or real(self, recurse))
    for _ in range(5):
        assert [id(p) for p in ps.parameters(m.net)] == [id(p) for p in real(m.net)]
        assert [id(p) for p in ps.parameters(m.net_ema)] == [id(p) for p in real(m.net_ema)]
    assert len(walks) == 2  # one walk per module
    m.net_ema[1].extra = torch.nn.Parameter(torch.ones(2))  # a registration anywhere: both walked again
    assert any(p is m.net_ema[1].extra for p in ps.parameters(m.net_ema))
    assert [id(p) for p in ps.parameters(m.net)] == [id(p) for p in real(m.net)] and len(walks) == 4
    w = weakref.ref(m.net[0].weight)
    walks.clear()  # the probe's own references to the modules
    del m
    gc.collect()
    assert w() is None and len(ps._module_params) == 0


def test_module_parameters_of_an_object_that_is_not_a_module(ps):
    """Upstream's EMA update takes anything with .parameters() (bench_dit.py passes a Namespace): walked each time."""
    import argparse

    params = [torch.nn.Parameter(torch.ones(2))]
    duck = argparse.Namespace(parameters=lambda: iter(params))
    assert ps.parameters(duck) == params and ps.parameters(duck) == params
