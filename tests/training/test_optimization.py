"""The learning rate as a pure function of the epoch, the optimizers and their parameter groups, and the EMA: each
against the torch or torchvision object it stands for."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

from models.upanets import UPANets
from upanets_lab.training import engine
from upanets_lab.training.optimization import Schedule, build_ema, build_optimizer, set_lr


def scheduler_rates(epochs: int, base: float, *, warmup: int = 0, method: str = "linear", decay: float = 0.01,
                    lr_min: float = 0.0) -> list[float]:
    """The rate of each epoch as torchvision's reference builds the schedule: warmup scheduler, then
    CosineAnnealingLR(T_max=epochs - warmup, eta_min), stepped once per epoch."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    main = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs - warmup, eta_min=lr_min)
    if warmup:
        if method == "linear":
            first = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=decay, total_iters=warmup)
        else:
            first = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=decay, total_iters=warmup)
        scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [first, main], milestones=[warmup])
    else:
        scheduler = main
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_paper_schedule_is_the_lambda_scheduler_to_the_last_bit():
    """Without warmup and floor, the rates are LambdaLR's cosine factor times the base, bit for bit: resumed
    and uninterrupted paper runs keep their weights."""
    epochs, base = 7, 0.1
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    lambda_lr = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.5 * (1 + math.cos(math.pi * e / epochs)))
    expected = []
    for _ in range(epochs + 1):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        lambda_lr.step()
    assert [Schedule(epochs).lr(epoch, base) for epoch in range(epochs + 1)] == expected
    assert Schedule(epochs).lr(epochs, base) == 0.0


@pytest.mark.parametrize("warmup, method, decay, lr_min", [
    (0, "linear", 0.01, 0.001), (2, "linear", 0.01, 0.0), (3, "linear", 0.2, 0.0005), (2, "constant", 0.1, 0.0),
])
def test_schedule_matches_torchvisions_schedulers(warmup, method, decay, lr_min):
    schedule = Schedule(10, warmup, method, decay, lr_min)
    ours = [schedule.lr(epoch, 0.4) for epoch in range(10)]
    assert ours == pytest.approx(scheduler_rates(10, 0.4, warmup=warmup, method=method, decay=decay,
                                                 lr_min=lr_min), rel=1e-12, abs=1e-15)


def test_set_lr_scales_each_groups_own_base():
    model = UPANets(4, 10, 1, 8)
    optimizer = build_optimizer(model, "sgd", lr=0.2, momentum=0.9, weight_decay=5e-4, norm_weight_decay=0.0)
    optimizer.param_groups[1]["initial_lr"] = 0.1  # as a resumed optimizer might hold
    assert set_lr(optimizer, Schedule(4), 2) == pytest.approx(0.1)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.1, 0.05])


def test_norm_weight_decay_covers_normalisation_layers_and_biases_once():
    model = UPANets(4, 10, 1, 8)
    optimizer = build_optimizer(model, "sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, norm_weight_decay=0.0)
    other, norm = optimizer.param_groups
    assert (other["weight_decay"], norm["weight_decay"]) == (5e-4, 0.0)
    names = {id(p): name for name, p in model.named_parameters()}
    norm_names = {names[id(p)] for p in norm["params"]}
    batchnorms = {f"{name}.{kind}" for name, module in model.named_modules()
                  if isinstance(module, nn.modules.batchnorm._BatchNorm) for kind in ("weight", "bias")}
    biases = {name for name in names.values() if name.endswith(".bias")}
    assert norm_names == batchnorms | biases
    assert len(other["params"]) + len(norm["params"]) == len(list(model.parameters()))
    assert all(p.dim() > 1 for p in other["params"])  # every weight left is a convolution's or a linear's


def test_one_group_without_norm_weight_decay_and_each_optimizer():
    model = UPANets(4, 10, 1, 8)
    sgd = build_optimizer(model, "sgd", lr=0.1, momentum=0.9, weight_decay=5e-4)
    assert len(sgd.param_groups) == 1 and sgd.param_groups[0]["initial_lr"] == 0.1
    assert not sgd.param_groups[0]["nesterov"]
    assert build_optimizer(model, "sgd_nesterov", lr=0.1, momentum=0.9, weight_decay=0).param_groups[0]["nesterov"]
    adamw = build_optimizer(model, "adamw", lr=1e-3, momentum=0.9, weight_decay=0.05)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.05
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(model, "lamb", lr=0.1, momentum=0.9, weight_decay=0)


def test_ema_decay_is_adjusted_as_torchvisions_and_averages_buffers():
    """alpha = (1 - decay) * world * batch * steps / epochs, capped at 1; the BatchNorm statistics are averaged."""
    model = UPANets(4, 10, 1, 8)
    ema = build_ema(model, 0.999, steps=4, batch_size=50, world_size=2, epochs=100)
    alpha = (1 - 0.999) * 2 * 50 * 4 / 100
    trained = copy.deepcopy(model)
    ema.update_parameters(model)  # the first update copies
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
        for name, buffer in trained.named_buffers():
            if buffer.is_floating_point():
                buffer.add_(2.0)
    ema.update_parameters(trained)
    weight = dict(ema.module.named_parameters())["linear.weight"]
    expected = dict(model.named_parameters())["linear.weight"] + alpha
    torch.testing.assert_close(weight, expected, rtol=0, atol=1e-6)
    name = next(name for name, _ in model.named_buffers() if name.endswith("running_mean"))
    averaged, start = dict(ema.module.named_buffers())[name], dict(model.named_buffers())[name]
    torch.testing.assert_close(averaged, start + 2 * alpha, rtol=0, atol=1e-6)

    capped = build_ema(model, 0.9, steps=32, batch_size=100, world_size=1, epochs=2)  # alpha 160, capped at 1
    capped.update_parameters(model)
    capped.update_parameters(trained)
    torch.testing.assert_close(dict(capped.module.named_parameters())["linear.weight"],
                               dict(trained.named_parameters())["linear.weight"], rtol=0, atol=0)


def test_ema_copies_the_weights_during_the_warmup_and_averages_after():
    """As torchvision's reference: each update of the warmup restarts the average (the EMA holds the weights);
    after it, updates average; only every ema_steps-th step updates."""
    model = nn.Linear(3, 2)
    ema = build_ema(model, 0.5, steps=2, batch_size=1, world_size=1, epochs=2)  # alpha 0.5 * 1 * 2 / 2 = 0.5
    trainer = engine.Trainer(model, nn.CrossEntropyLoss(), build_optimizer(model, "sgd", lr=0.1, momentum=0.0,
                             weight_decay=0.0), torch.amp.GradScaler("cpu", enabled=False), None, ema=ema,
                             ema_steps=2, bare=model, ema_copies=True)
    for step, shift in enumerate((1.0, 2.0, 4.0)):
        with torch.no_grad():
            model.weight.fill_(shift)
        trainer.update_ema(step)
    assert int(ema.n_averaged) == 0 and torch.all(ema.module.weight == 4.0)  # steps 0 and 2 copied
    trainer.set_warmup(False)
    for step, shift in enumerate((8.0, 16.0)):
        with torch.no_grad():
            model.weight.fill_(shift)
        trainer.update_ema(step)  # step 0 updates (a first update copies: n_averaged was 0), step 1 does not
    assert torch.all(ema.module.weight == 8.0) and int(ema.n_averaged) == 1
    with torch.no_grad():
        model.weight.fill_(0.0)
    trainer.update_ema(2)
    assert torch.all(ema.module.weight == 4.0)  # 8 + 0.5 * (0 - 8): averaged
