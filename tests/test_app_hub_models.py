"""The app on Hub repos (issue 31 items 3-4): `--model org/name` and `--extra-model org/name`
offered under that name at each precision, the model's own tokenizer everywhere (prompts,
streaming, labels, the API, the export), every feature on a repo with its own 600-id
byte-level BPE and a config variant (relu, n_inner): capture, head roles, logit lens,
knock-out, the token view's map, the tiers, batching, Compare; visitors limited to the list
unless the operator allows any repo with `--allow-hub-models --max-params N`."""
from __future__ import annotations

import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

import gpt2
from conftest import ROOT, free_port, save_hf_checkpoint, serving
from hubcache import OWN, PAIR, PICKLE, folder_of, make_hf_home, revision, use_offline
from playground import export, tokens, validate
from playground.inspection import RunStore
from playground.models import ModelTable, offered_sources, start_model, with_tiers
from playground.service import Service

PROMPT = "Once upon a time, Mia found a red box."


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory) -> Path:
    return make_hf_home(tmp_path_factory.mktemp("hub-app"))


@pytest.fixture
def offline(hf_home, monkeypatch) -> Path:
    return use_offline(hf_home, monkeypatch)


@pytest.fixture
def service(offline, tiny_checkpoint) -> Service:
    sources, tiers = with_tiers(offered_sources(str(tiny_checkpoint), [OWN, PAIR]))
    return Service(ModelTable(sources, tiers), RunStore())


def settings(model: str, **changes) -> validate.Settings:
    values = dict(prompt=PROMPT, model=model, temperature=0.0, top_k=0, top_p=1.0, max_new_tokens=12, seed=0)
    return validate.Settings(**{**values, **changes})


def own() -> tuple[gpt2.GPT, gpt2.Tokenizer]:
    return gpt2.load_model(OWN, compile=False), gpt2.load_tokenizer(OWN)


def test_repos_are_offered_under_their_ids_at_each_tier(offline, tiny_checkpoint):
    sources, tiers = with_tiers(offered_sources(OWN, [PAIR + "@main", str(tiny_checkpoint)]))
    assert list(sources)[:7] == [OWN, f"{OWN} · fp32", f"{OWN} · bf16", f"{PAIR}@main", f"{PAIR}@main · fp32",
                                 f"{PAIR}@main · bf16", "local:tiny"]
    assert (tiers[OWN], tiers[f"{OWN} · fp32"], sources[f"{OWN} · bf16"]) == ("int8", "fp32", OWN)
    assert start_model(OWN, list(sources)) == (OWN, None)
    first, notice = start_model("tiny-org/not-cached", ["tiny-org/not-cached"])
    assert first == "builtin" and "`tiny-org/not-cached` is not in the Hugging Face cache" in notice


def test_generation_uses_the_models_own_tokenizer(service):
    model, tokenizer = own()
    ids = tokenizer.encode(PROMPT)
    expected = gpt2.generate(model, torch.tensor([ids]), 12)[0, len(ids):].tolist()
    steps = list(service.generate(settings(f"{OWN} · fp32")))
    run = service.runs.get(steps[-1].run_id)
    assert run.ids == ids + expected and run.tokenizer.n_vocab == 600
    assert steps[-1].text == tokenizer.decode(expected)
    assert [s.text for s in steps[1:-1]][-1] == tokenizer.decode(expected)  # streamed with its decoder


def test_stop_at_end_is_the_models_own_end_of_text(service):
    tokenizer = service.models.tokenizer(OWN)
    eot = tokenizer.encode("<|endoftext|>")[0]
    assert service.models.get(OWN).config.eos_token_id == eot != gpt2.EOT_ID
    for model in (f"{OWN} · fp32", f"{PAIR} · fp32"):
        for seed in range(120):  # sampled freely, near uniform over 600 ids: <|endoftext|> comes
            steps = list(service.generate(settings(model, temperature=2.0, seed=seed, max_new_tokens=50,
                                                   stop_at_end=True)))
            run = service.runs.get(steps[-1].run_id)
            if run.ended == "end of text":
                assert run.ids[-1] == eot and eot not in run.ids[run.n_prompt:-1]
                break
        else:
            pytest.fail(f"{model}: never ended at end of text")


def test_every_view_reads_the_models_tokens(service):
    tokenizer = service.models.tokenizer(OWN)
    steps = list(service.generate(settings(f"{OWN} · fp32", max_new_tokens=20)))
    run = service.runs.get(steps[-1].run_id)
    labels = tokens.labels(run.ids, tokenizer=tokenizer)
    assert labels != tokens.labels(run.ids)  # GPT-2's reading of these ids is another text
    assert "".join(tokens.text(run.ids, tokenizer)) == tokenizer.decode(run.ids)
    view = service.view(run, 1, 2, None, 16)  # the heatmap
    assert view.labels == labels[-16:] and np.allclose(view.weights.sum(-1) + view.earlier, 1, atol=1e-5)
    attention = service.token_attention(run, 0, None, -1, "from")  # the token view
    assert attention.labels == labels and abs(attention.weights.sum() - 1) < 1e-5
    matrix = service.token_matrix(run, 1, 0)
    assert matrix.shape == (len(run.ids), len(run.ids))
    roles = run.roles  # head roles
    assert set(roles) == set(gpt2.ROLES) and roles["induction"].shape == (2, 4)
    lens = service.lens(run, slice(len(run.ids) - 1, len(run.ids)), 5)  # the logit lens
    assert lens.ids.shape[0] == 2 and int(lens.ids.max()) < 600
    last = torch.topk(run.capture.next_token_probs(rows=slice(len(run.ids) - 1, len(run.ids)))[0, 0], 5)
    assert lens.ids[-1, 0, 0].tolist() == last.indices.tolist()  # the last block's lens is the model's own
    candidates = run.candidates  # next token
    assert len(candidates) == len(run.ids) - 1 and max(max(c.ids) for c in candidates) < 600
    document = export.run_document(run, 0, None, {}, export.logit_lens(lens, len(run.ids) - 1, run.tokenizer), "")
    assert document["prompt"] == PROMPT and document["tokens"] == tokens.text(run.ids, tokenizer)
    assert document["generated"] == tokenizer.decode(run.ids[run.n_prompt:])


def test_knock_out_and_batching_on_a_repo(service):
    """Knock-out runs its two rows in one decode loop; four users at once get what each gets
    alone (the tiers' loops, batch-invariant)."""
    model, tokenizer = own()
    s = settings(f"{OWN} · fp32", max_new_tokens=16)
    knockout = service.ablate(s, {0: [0, 1, 2, 3], 1: [0, 1, 2, 3]})
    ids = tokenizer.encode(PROMPT)
    assert knockout.baseline == gpt2.generate(model, torch.tensor([ids]), 16)[0, len(ids):].tolist()
    with gpt2.ablate_heads(model, {0: [0, 1, 2, 3], 1: [0, 1, 2, 3]}) as ablation:
        assert knockout.ablated == gpt2.generate(model, torch.tensor([ids]), 16,
                                                 ablation=ablation)[0, len(ids):].tolist()
    probs = service.chosen_probs(f"{OWN} · fp32", ids, {1: [0]})
    assert probs.shape == (len(ids) - 1,)
    for tier in (OWN, f"{OWN} · bf16", f"{OWN} · fp32"):
        alone = [list(service.generate(settings(tier, temperature=1.0, seed=seed)))[-1].text for seed in range(4)]
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda seed: list(service.generate(settings(tier, temperature=1.0,
                                                                                 seed=seed)))[-1].text, range(4)))
        assert together == alone, tier


def test_compare_a_repo_with_a_preset_sized_model_and_its_own_tiers(service, tiny_checkpoint):
    """Compare: the same prompt and settings on two models, each read with its own tokenizer."""
    runs = {}
    for name in (f"{OWN} · fp32", OWN, "local:tiny"):
        steps = list(service.generate(settings(name)))
        runs[name] = service.runs.get(steps[-1].run_id)
    assert runs[OWN].ids[:runs[OWN].n_prompt] == service.models.tokenizer(OWN).encode(PROMPT)
    assert runs["local:tiny"].ids[:runs["local:tiny"].n_prompt] == gpt2.encode(PROMPT)
    assert runs["local:tiny"].tokenizer.n_vocab == 50257
    assert service.models.get(OWN).int8_head is not None  # the int8 tier, served
    from playground.explain import side_by_side

    a, b = runs[f"{OWN} · fp32"], runs["local:tiny"]
    html = side_by_side(PROMPT, (a.model_name, b.model_name), a.ids[a.n_prompt:], b.ids[b.n_prompt:],
                        (a.tokenizer, b.tokenizer))
    assert service.models.tokenizer(OWN).decode(a.ids[a.n_prompt:][:1]).strip() in html


def test_the_speed_tiers_serve_a_repo_of_openais_variant_and_name_what_keeps_another_eager(offline):
    """A repo computed as OpenAI's GPT-2 (its own tokenizer and vocabulary) decodes on the
    compiled kernels at every tier, batched rows equal to lone ones; OWN (relu, n_inner)
    decodes eagerly and its status line names those fields."""
    import shutil

    from hubcache import snapshot

    plain = "tiny-org/plain"
    folder = snapshot(offline, plain, revision(plain))
    eot = gpt2.load_tokenizer(OWN).encode("<|endoftext|>")[0]
    save_hf_checkpoint(gpt2.GPTConfig(vocab_size=600, context_length=64, n_embd=32, n_layer=2, n_head=4,
                                      bos_token_id=eot, eos_token_id=eot), folder, seed=3)
    shutil.copy(folder_of(offline, OWN) / "tokenizer.json", folder / "tokenizer.json")
    sources, tiers = with_tiers(offered_sources(plain, [OWN]))
    service = Service(ModelTable(sources, tiers), RunStore())
    for tier in (plain, f"{plain} · bf16", f"{plain} · fp32"):
        model = service.models.get(tier)
        assert model.compile_status.wait(120), (tier, model.compile_status.summary)
        alone = [list(service.generate(settings(tier, temperature=1.0, seed=seed)))[-1].text for seed in range(4)]
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda seed: list(service.generate(settings(tier, temperature=1.0,
                                                                                 seed=seed)))[-1].text, range(4)))
        assert together == alone, tier
    status = service.models.get(OWN).compile_status
    assert not status.wait(120) and "activation_function='relu', n_inner=48" in status.summary


def test_visitors_choose_only_from_the_list_unless_the_operator_allows_any_repo(offline, tiny_checkpoint):
    sources, tiers = with_tiers(offered_sources(str(tiny_checkpoint), []))
    closed = ModelTable(sources, tiers)
    with pytest.raises(ValueError, match="model must be one of"):
        validate.model_name(OWN, closed.names)
    opened = ModelTable(sources, tiers, allow_hub=True, max_params=10**7)
    names = opened.names
    assert validate.model_name(OWN, names) == OWN and validate.model_name(f"{PAIR} · bf16", names)
    for bad in ("../etc", "/tmp/x", "org/name · int4", "org/a/b", str(tiny_checkpoint)):
        with pytest.raises(ValueError, match=r"model must be one of .*\(or a Hub repo id, org/name\)"):
            validate.model_name(bad, names)
    service = Service(opened, RunStore())
    assert list(service.generate(settings(OWN)))[-1].stored
    small = ModelTable(sources, tiers, allow_hub=True, max_params=1000)
    validate.model_name(OWN, small.names)
    with pytest.raises(gpt2.WeightsError, match=r"tiny-org/own-bpe: [\d,]+ parameters, more than the 1,000 "
                                                r"allowed here"):
        small.get(OWN)
    validate.model_name(PICKLE, names)
    with pytest.raises(gpt2.WeightsError) as error:
        opened.get(PICKLE)
    assert "pickle checkpoints are never loaded" in str(error.value) and str(offline) not in str(error.value)
    assert validate.model_name("tests/hubcache.py", names)  # a repo id even where a file has that name:
    with pytest.raises(gpt2.WeightsError, match="tests/hubcache.py: cannot download it"):  # never read
        opened.get("tests/hubcache.py")
    for i in range(40):  # names visitors made up are forgotten, oldest first
        small.admit(f"someone/model-{i}")
    assert len(small.sources) < len(sources) + 40


def test_a_repo_is_reserved_its_size_in_the_memory_budget_before_it_loads(offline, tiny_checkpoint):
    """As a preset's: its float32 weights (from its config, read with its tokenizer) are made
    room for before the weights are read; least recently used models go first."""
    sources, tiers = with_tiers(offered_sources(str(tiny_checkpoint), [OWN]))
    config = gpt2.load_model(OWN, compile=False).config
    table = ModelTable(sources, tiers, max_bytes=4 * config.num_params + 1000)
    table.get("local:tiny")
    table.tokenizer(OWN)
    assert table._load_bytes(OWN) == 4 * config.num_params
    table.get(f"{OWN} · fp32")
    assert not table.loaded("local:tiny") and table.loaded(f"{OWN} · fp32")  # room made before the load


def test_the_app_offers_a_repo_and_serves_it(hf_home, tiny_checkpoint, tmp_path):
    """`app.py --model <local> --extra-model org/name`, offline from a Hub cache: the repo is in
    the list under its name, /generate streams its own tokenizer's text, the API's views read
    its tokens; visitors cannot name another repo. With --allow-hub-models --max-params they can."""
    from gradio_client import Client

    tokenizer = gpt2.load_tokenizer(folder_of(hf_home, OWN))
    model = gpt2.load_model(str(folder_of(hf_home, OWN)), compile=False)
    ids = tokenizer.encode(PROMPT)
    expected = tokenizer.decode(gpt2.generate(model, torch.tensor([ids]), 10)[0, len(ids):].tolist())
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "GPT2_WEIGHTS_DIR": str(tmp_path / "weights"), "GRADIO_SERVER_PORT": str(free_port())}
    env.pop("GPT2_EXTRA_MODELS", None)
    command = [sys.executable, "app.py", "--model", str(tiny_checkpoint), "--extra-model", OWN]
    with serving(command, env, ROOT, tmp_path / "app.log") as url:
        client = Client(url, verbose=False)
        text = client.predict(prompt=PROMPT, model=f"{OWN} · fp32", temperature=0.0, max_new_tokens=10,
                              api_name="/generate")
        assert text == expected
        out = client.predict(text=PROMPT, model=f"{OWN} · fp32", k=3, api_name="/next_tokens")
        assert out["tokens"] == tokens.labels(ids, tokenizer=tokenizer)
        lens = client.predict(text=PROMPT, model=OWN, api_name="/logit_lens")
        assert len(lens["layers"]) == 2
        status = client.predict(model=f"{OWN} · bf16", api_name="/load_model")
        assert status.startswith(f"**{OWN} · bf16** ready · bf16")
        with pytest.raises(Exception, match="model must be one of"):
            client.predict(prompt=PROMPT, model=PAIR, api_name="/generate")
    env["GRADIO_SERVER_PORT"] = str(free_port())
    command = [sys.executable, "app.py", "--model", str(tiny_checkpoint), "--allow-hub-models",
               "--max-params", "2000000"]
    with serving(command, env, ROOT, tmp_path / "open.log") as url:
        client = Client(url, verbose=False)
        text = client.predict(prompt=PROMPT, model=f"{PAIR} · fp32", temperature=0.0, max_new_tokens=6,
                              api_name="/generate")
        pair = gpt2.load_model(str(folder_of(hf_home, PAIR)), compile=False)
        ids = tokenizer.encode(PROMPT)
        assert text == tokenizer.decode(gpt2.generate(pair, torch.tensor([ids]), 6)[0, len(ids):].tolist())
        with pytest.raises(Exception, match="pickle checkpoints are never loaded"):
            client.predict(model=PICKLE, api_name="/load_model")


def test_every_view_of_a_repo_in_the_browser(hf_home, tiny_checkpoint, tmp_path):
    """`app.py --model org/name --extra-model <local>` in Chromium: the page opens on the repo
    (int8), generates, and the token view, heatmap, head overview, next token, logit lens,
    knock-out and Compare (with its fp32 tier) all show the repo's own tokens."""
    from playwright.sync_api import expect

    from test_app_server import ARTIFACTS, _heatmap, browser_page

    tokenizer = gpt2.load_tokenizer(folder_of(hf_home, OWN))
    prompt_ids, max_new = tokenizer.encode(PROMPT), 10
    total = len(prompt_ids) + max_new
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "GPT2_WEIGHTS_DIR": str(tmp_path / "weights"), "GRADIO_SERVER_PORT": str(free_port())}
    env.pop("GPT2_EXTRA_MODELS", None)
    command = [sys.executable, "app.py", "--model", OWN, "--extra-model", str(tiny_checkpoint)]
    with serving(command, env, ROOT, tmp_path / "app.log") as url, browser_page(url) as page:
        expect(page.locator("#model-status")).to_contain_text(f"{OWN} ready · int8", timeout=60_000)
        assert page.locator("#model input").input_value() == OWN
        page.fill("#prompt textarea", PROMPT)
        page.fill("#seed textarea, #seed input", "5")
        page.fill("#max-new-tokens input[type=number]", str(max_new))
        page.press("#max-new-tokens input[type=number]", "Enter")
        page.locator("#generate").click()
        expect(page.locator("#stats")).to_contain_text("tokens generated", timeout=60_000)
        page.wait_for_function(f"document.querySelectorAll('#token-view [data-pos]').length === {total}"
                               " && !document.querySelector('#token-view .live')", timeout=30_000)
        shown = page.eval_on_selector_all("#token-view [data-pos]", "spans => spans.map(s => s.textContent)")
        assert shown[:len(prompt_ids)] == tokens.text(prompt_ids, tokenizer)  # the repo's own tokens
        assert "".join(shown) == PROMPT + page.locator("#output textarea").input_value()
        page.get_by_role("tab", name="Heatmap").click()
        expect(page.locator("#attention-heatmap .js-plotly-plot")).to_be_visible(timeout=30_000)
        assert _heatmap(page)["ticks"][:3] == tokens.labels(prompt_ids[:3], tokenizer=tokenizer)
        page.get_by_role("tab", name="Heads").click()
        page.wait_for_selector("#head-overview .js-plotly-plot", timeout=30_000)
        z = page.eval_on_selector("#head-overview .js-plotly-plot", "el => el.data[0].z")
        assert len(z) == 2 and len(z[0]) == 4  # every layer x head
        page.get_by_role("tab", name="Next token").click()
        expect(page.locator("#candidates .js-plotly-plot")).to_be_visible(timeout=30_000)
        page.get_by_role("tab", name="Logit lens").click()
        expect(page.locator("#lens-table tbody tr")).to_have_count(2, timeout=30_000)
        lens = page.eval_on_selector("#lens-table [data-lens]", "el => JSON.parse(el.dataset.lens)")
        assert all(t["id"] < 600 and t["token"] == tokenizer.decode([t["id"]])
                   for layer in lens["layers"] for t in layer["top"])
        page.get_by_role("tab", name="Knock-out").click()
        page.fill("#ko-heads textarea, #ko-heads input", "0.1, 1.2")
        page.locator("#ko-run").click()
        expect(page.locator("#ko-texts .sbs-col")).to_have_count(2, timeout=60_000)
        left = page.locator("#ko-texts .sbs-col").first.locator(".sbs-text").inner_text()
        assert left == PROMPT + page.locator("#output textarea").input_value()  # as is: the same run
        page.get_by_role("tab", name="Compare").click()
        assert page.locator("#compare-model input").input_value() == f"{OWN} · fp32"  # its exact tier
        page.locator("#compare-run").click()
        expect(page.locator("#compare-rows .js-plotly-plot")).to_be_visible(timeout=60_000)
        names = page.eval_on_selector("#compare-rows .js-plotly-plot", "el => el.layout.yaxis.ticktext")
        assert len(names) == 2 and names[1].startswith(f"{OWN} · fp32")
        page.screenshot(path=str(ARTIFACTS / "app-hub-repo-compare.png"), full_page=True)


def test_a_visitor_types_a_repo_id_when_the_operator_allows_any(hf_home, tiny_checkpoint, tmp_path):
    """`--allow-hub-models --max-params N`: the model menu takes a typed repo id, which loads and
    generates with its own tokenizer; one above N is refused in the status line, by its size."""
    from playwright.sync_api import expect

    from test_app_server import browser_page

    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "GPT2_WEIGHTS_DIR": str(tmp_path / "weights"), "GRADIO_SERVER_PORT": str(free_port())}
    env.pop("GPT2_EXTRA_MODELS", None)
    command = [sys.executable, "app.py", "--model", str(tiny_checkpoint), "--allow-hub-models",
               "--max-params", "50000"]
    with serving(command, env, ROOT, tmp_path / "app.log") as url, browser_page(url) as page:
        expect(page.locator("#model-status")).to_contain_text("local:tiny ready", timeout=60_000)
        for name, status in ((PAIR, r"tiny-org/pair-bpe: 65,920 parameters, more than the 50,000 allowed here"),
                             (f"{OWN} · fp32", f"{OWN} · fp32 ready · fp32")):
            page.fill("#model input", name)
            page.press("#model input", "Enter")
            expect(page.locator("#model-status")).to_contain_text(re.compile(status), timeout=60_000)
        page.fill("#prompt textarea", PROMPT)
        page.fill("#max-new-tokens input[type=number]", "6")
        page.press("#max-new-tokens input[type=number]", "Enter")
        page.locator("#generate").click()
        expect(page.locator("#stats")).to_contain_text("tokens generated", timeout=60_000)
        tokenizer = gpt2.load_tokenizer(folder_of(hf_home, OWN))
        shown = page.eval_on_selector_all("#token-view [data-pos]", "spans => spans.map(s => s.textContent)")
        assert shown[:3] == tokens.text(tokenizer.encode(PROMPT)[:3], tokenizer)
