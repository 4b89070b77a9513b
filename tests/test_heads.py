"""head_scores on hand-built attention patterns whose answers are known."""
import torch

from gpt2.heads import ROLES, head_scores, role_targets, score_sums, strongest_roles


def causal_uniform(T: int) -> torch.Tensor:
    """[T, T] uniform attention over keys 0..q."""
    mask = torch.ones(T, T).tril()
    return mask / mask.sum(-1, keepdim=True)


def previous_token(T: int) -> torch.Tensor:
    p = torch.zeros(T, T)
    p[0, 0] = 1
    p[torch.arange(1, T), torch.arange(T - 1)] = 1
    return p


def induction(ids: torch.Tensor) -> torch.Tensor:
    """Attend to the token after the latest earlier occurrence of the current token."""
    T = len(ids)
    p = torch.zeros(T, T)
    for q in range(T):
        earlier = [k for k in range(q) if ids[k] == ids[q]]
        p[q, earlier[-1] + 1 if earlier else q] = 1
    return p


def repeated_ids(length: int = 10) -> torch.Tensor:
    seg = torch.randperm(100, generator=torch.Generator().manual_seed(0))[:length] + 1000
    return torch.cat([torch.tensor([50256]), seg, seg])


def test_perfect_patterns_score_one_and_uniform_zero():
    ids = repeated_ids()
    T = len(ids)
    first = torch.zeros(T, T)
    first[:, 0] = 1
    duplicate = torch.zeros(T, T)
    for q in range(T):
        earlier = [k for k in range(q) if ids[k] == ids[q]]
        duplicate[q, earlier[0] if earlier else q] = 1
    heads = torch.stack([previous_token(T), induction(ids), duplicate, first, causal_uniform(T)])
    scores = head_scores([heads[None]], ids[None])  # one layer, 5 heads
    for head, role in enumerate(ROLES):
        print(role, scores[role])
        assert abs(scores[role][0, head] - 1) < 1e-5, role
        assert abs(scores[role][0, 4]) < 1e-5, role  # uniform attention: chance level = 0
    raw = head_scores([heads[None]], ids[None], relative_to_uniform=False)
    assert abs(raw["previous_token"][0, 0] - 1) < 1e-5
    assert 0 < raw["previous_token"][0, 4] < 0.3


def test_roles_do_not_confuse_each_other():
    ids = repeated_ids()
    T = len(ids)
    scores = head_scores(previous_token(T)[None, None, None], ids[None])  # [L=1, B, H, T, T]
    assert scores["induction"][0, 0] < 0.1 and scores["first_token"][0, 0] < 0.1


def test_accepts_dict_and_batches_and_names_roles():
    ids = torch.stack([repeated_ids(8), repeated_ids(8).flip(0)])
    T = ids.size(1)
    layer0 = torch.stack([previous_token(T), causal_uniform(T)])[None].expand(2, 2, T, T)
    layer1 = torch.stack([torch.stack([induction(i), causal_uniform(T)]) for i in ids])
    scores = head_scores({0: layer0, 1: layer1}, ids)
    assert scores["induction"].shape == (2, 2)
    roles = strongest_roles(scores)
    assert roles[(0, 0)][0] == "previous_token" and roles[(1, 0)][0] == "induction"
    assert (0, 1) not in roles and (1, 1) not in roles


def test_no_repeats_means_no_induction_score():
    ids = torch.arange(1, 9)[None]
    scores = head_scores([causal_uniform(8)[None, None]], ids)
    assert torch.isnan(scores["induction"]).all()
    assert strongest_roles(scores) == {}


def test_sums_over_blocks_of_rows_give_the_same_scores():
    """What the app does for long texts: score blocks of query rows, never the whole map."""
    ids = repeated_ids(12)[None]
    T = ids.size(1)
    probs = torch.softmax(torch.randn(2, 1, 3, T, T).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), -1e9), -1)
    whole = head_scores(probs, ids)
    targets = role_targets(ids)
    totals = {role: 0 for role in ROLES}
    counts = dict.fromkeys(ROLES, 0)
    for start in range(0, T, 4):
        stop = min(start + 4, T)
        block = {role: t[:, start:stop, :stop] for role, t in targets.items()}
        for role, (total, count) in score_sums(probs[..., start:stop, :stop], block, start).items():
            totals[role] = totals[role] + total
            counts[role] += count
    for role in ROLES:
        torch.testing.assert_close(totals[role] / counts[role], whole[role])
