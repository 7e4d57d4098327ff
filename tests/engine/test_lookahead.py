import pytest
import torch

from kdpipe.engine.lookahead import Lookahead


def test_pulls_towards_the_average_every_k_steps_more_strongly_as_training_ends():
    net = torch.nn.BatchNorm1d(1)
    ahead = Lookahead(net, every=2, total_steps=4)
    with torch.no_grad():
        net.bias.fill_(1.0)
    ahead.step()
    assert net.bias.item() == 1.0  # between pulls the network trains on its own
    ahead.step()  # step 2 of 4: decay 0.95**2 * (1/2)**3
    decay = 0.95**2 / 8
    assert net.bias.item() == pytest.approx(1 - decay) and ahead.average["bias"].item() == pytest.approx(1 - decay)
    with torch.no_grad():
        net.bias.fill_(2.0)
    ahead.step()
    ahead.step()  # the last step: decay 0.95**2
    expected = (1 - decay) * 0.95**2 + 2.0 * (1 - 0.95**2)
    assert net.bias.item() == pytest.approx(expected)
    assert net.num_batches_tracked.dtype == torch.long and "num_batches_tracked" not in ahead.average


def test_finish_leaves_the_average_and_state_round_trips():
    net = torch.nn.Linear(1, 1)
    ahead = Lookahead(net, every=5, total_steps=10)
    start = net.weight.item()
    with torch.no_grad():
        net.weight.add_(3.0)
    ahead.finish()
    assert net.weight.item() == pytest.approx(start)
    other = Lookahead(torch.nn.Linear(1, 1), every=5, total_steps=10)
    ahead.step()
    other.load_state_dict(ahead.state_dict())
    assert other.steps == 1 and torch.equal(other.average["weight"], ahead.average["weight"])
