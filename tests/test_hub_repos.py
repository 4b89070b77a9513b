"""Hub repo ids wherever a model is named (issue 31 items 3-4): `gpt2.load_model("org/name")`
and `org/name@revision` through huggingface_hub's cache, `python -m gpt2 download org/name`,
a pickle-only repo refused with how to convert it (no pickle read), the checks made before a
repo's weights download, and every feature of the app on a repo with its own byte-level BPE
vocabulary and a config variant (relu, n_inner). Never the network: the repos are written
into a Hugging Face cache laid out as huggingface_hub lays out a download."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gpt2
from conftest import ROOT, hf_reference
from gpt2 import hub
from hubcache import OWN, PAIR, PICKLE, TEXT, folder_of, make_hf_home, revision, trained_tokenizer, use_offline

@pytest.fixture(scope="module")
def hf_home(tmp_path_factory) -> Path:
    return make_hf_home(tmp_path_factory.mktemp("hub-repos"))


@pytest.fixture
def offline(hf_home, monkeypatch) -> Path:
    return use_offline(hf_home, monkeypatch)


# -- names -----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, parsed", [
    ("org/name", ("org/name", None)), ("org/name@main", ("org/name", "main")),
    ("a-b.c_d/x.y-z@refs/pr/12", ("a-b.c_d/x.y-z", "refs/pr/12")),
    ("openai-community/gpt2@" + "0" * 40, ("openai-community/gpt2", "0" * 40)),
    ("gpt2", None), ("org/name/more", None), ("../x", None), ("org/../x", None), ("org/a--b", None),
    ("org/name@", None), ("org/name@../x", None), ("/abs/path", None), ("org/name.git", None), ("", None),
])
def test_repo_ids_are_parsed_strictly(text, parsed):
    repo = hub.parse_repo(text)
    assert (repo and (repo.repo_id, repo.revision)) == parsed or (repo is None and parsed is None)


def test_a_local_path_of_that_shape_wins(tmp_path, monkeypatch, tiny_dir):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(gpt2.WeightsError, match="runs/tiny.safetensors: not a preset .* and no such file"):
        gpt2.load_model("runs/tiny.safetensors")  # a missing file, not a Hub repo
    shutil.copytree(tiny_dir, tmp_path / "org" / "name")
    assert gpt2.weights.hub_repo("org/name") is None
    assert gpt2.load_model("org/name", compile=False).config.n_embd == 32  # the folder, no Hub asked


# -- the library -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [OWN, PAIR])
def test_a_repo_loads_from_the_cache_and_computes_as_transformers(offline, name):
    from tokenizers import Tokenizer as Reference

    model = gpt2.load_model(name, compile=False)
    tokenizer = gpt2.load_tokenizer(name)
    reference = hf_reference(folder_of(offline, name))
    folder = folder_of(offline, name)
    ref_tok = (Reference.from_file(str(folder / "tokenizer.json")) if (folder / "tokenizer.json").is_file()
               else trained_tokenizer()._tokenizer)
    ids = tokenizer.encode(TEXT)
    assert ids == ref_tok.encode(TEXT, add_special_tokens=False).ids
    assert tokenizer.decode(ids) == TEXT
    idx = torch.tensor([ids])
    with torch.no_grad():
        ours, theirs = model(idx), reference(idx).logits
    assert ours.shape[-1] == tokenizer.n_vocab < gpt2.EOT_ID
    assert (ours - theirs).abs().max() < 1e-4
    greedy = gpt2.generate(model, idx, 12)
    assert greedy.tolist() == reference.generate(idx, max_new_tokens=12, do_sample=False,
                                                 pad_token_id=0).tolist()


def test_a_revision_is_its_own_snapshot(offline):
    main, tagged = gpt2.load_model(OWN, compile=False), gpt2.load_model(OWN + "@v1", compile=False)
    pinned = gpt2.load_model(f"{OWN}@{revision(OWN + '@v1')}", compile=False)
    assert not torch.equal(main.wte.weight, tagged.wte.weight)
    assert torch.equal(tagged.wte.weight, pinned.wte.weight)
    with pytest.raises(gpt2.WeightsError, match=r"tiny-org/own-bpe@v9: cannot download it and it is not in "
                                                r"the Hugging Face cache.*python -m gpt2 download tiny-org/own-bpe@v9"):
        gpt2.load_model(OWN + "@v9")


def test_a_pickle_only_repo_is_refused_with_how_to_convert_it(offline):
    for load in (gpt2.load_model, gpt2.weights.download_repo):
        with pytest.raises(gpt2.WeightsError) as error:
            load(PICKLE)
        message = str(error.value)
        assert "only pytorch_model.bin, a pickle checkpoint: pickle checkpoints are never loaded here" in message
        assert "https://huggingface.co/spaces/safetensors/convert" in message
        assert "tiny-org/pickle-only@refs/pr/N" in message and "save_pretrained" in message


def test_an_unknown_name_says_what_it_may_be(offline):
    with pytest.raises(gpt2.WeightsError, match="not a Hub repo id"):
        gpt2.load_model("no such thing")
    with pytest.raises(gpt2.WeightsError, match="tiny-org/absent: cannot download it"):
        gpt2.load_tokenizer("tiny-org/absent")


# -- before a repo's weights download (the Hub's answers stood in for) ---------------------------
class FakeHub:
    """huggingface_hub's model_info, get_safetensors_metadata and hf_hub_download answered from
    local folders (repo id -> folder), recording each file fetched."""

    def __init__(self, repos: dict[str, Path], cache: Path):
        self.repos, self.cache, self.fetched = repos, cache, []

    def install(self, monkeypatch) -> None:
        import huggingface_hub
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(self.cache))
        monkeypatch.setattr(hub, "reachable", lambda url, timeout=0: True)
        monkeypatch.setattr(huggingface_hub, "HfApi", lambda endpoint=None: self)
        monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", self.metadata)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", self.download)

    def model_info(self, repo_id, revision=None, timeout=None):
        from types import SimpleNamespace

        return SimpleNamespace(siblings=[SimpleNamespace(rfilename=p.name) for p in self.repos[repo_id].iterdir()])

    def metadata(self, repo_id, revision=None, timeout=None):
        from types import SimpleNamespace

        header = gpt2.weights.read_header(self.repos[repo_id] / "model.safetensors")
        tensors = {k: SimpleNamespace(dtype=header.dtypes[k], shape=list(shape)) for k, shape in header.shapes.items()}
        return SimpleNamespace(files_metadata={"model.safetensors": SimpleNamespace(tensors=tensors)})

    def download(self, repo_id, filename, revision=None, **_):
        assert not filename.endswith(".bin")
        self.fetched.append(filename)
        target = self.cache / repo_id / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.repos[repo_id] / filename, target)
        return str(target)


def test_a_repo_is_checked_before_its_weights_download(hf_home, tmp_path, monkeypatch):
    wide = shutil.copytree(folder_of(hf_home, OWN), tmp_path / "wide")
    (wide / "config.json").write_text(json.dumps({**json.loads((wide / "config.json").read_text()), "n_embd": 64}))
    relu2 = shutil.copytree(folder_of(hf_home, OWN), tmp_path / "cross")
    (relu2 / "config.json").write_text(json.dumps({**json.loads((relu2 / "config.json").read_text()),
                                                   "add_cross_attention": True}))
    fake = FakeHub({OWN: folder_of(hf_home, OWN), "o/wide": wide, "o/cross": relu2,
                    PICKLE: folder_of(hf_home, PICKLE)}, tmp_path / "cache")
    fake.install(monkeypatch)
    with pytest.raises(gpt2.WeightsError, match="pickle checkpoints are never loaded"):
        gpt2.weights.download_repo(PICKLE)
    with pytest.raises(gpt2.WeightsError, match=r"o/wide/model.safetensors: 'wte.weight' has shape \(600, 32\), "
                                                r"expected \(600, 64\)"):
        gpt2.weights.download_repo("o/wide")
    with pytest.raises(gpt2.WeightsError, match="add_cross_attention=True"):
        gpt2.weights.download_repo("o/cross")
    with pytest.raises(gpt2.WeightsError, match=r"tiny-org/own-bpe: [\d,]+ parameters, more than the 1,000 allowed"):
        gpt2.weights.download_repo(OWN, max_params=1000)
    assert "model.safetensors" not in fake.fetched  # every refusal came before the weights
    real = fake.model_info

    def timeout(*args, **kwargs):
        import httpx

        raise httpx.ReadTimeout("the Hub took too long")

    fake.model_info = timeout
    with pytest.raises(gpt2.WeightsError, match=r"tiny-org/own-bpe: download failed \(ReadTimeout: the Hub took"):
        gpt2.weights.download_repo(OWN)
    fake.model_info = real
    folder = gpt2.weights.download_repo(OWN, max_params=10**6)
    assert fake.fetched[-1] == "model.safetensors" and "tokenizer.json" in fake.fetched
    assert gpt2.load_model(str(folder), compile=False).config.activation_function == "relu"


# -- the command line ----------------------------------------------------------------------------
def _cli(*args, home: Path, cwd: Path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HOME": str(home),
           "GPT2_KERNELS": "off"}
    return subprocess.run([sys.executable, "-m", "gpt2", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=180)


def test_the_command_line_takes_repo_ids(hf_home, tmp_path):
    run = _cli("download", OWN, home=hf_home, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "tiny-org/own-bpe: in the Hugging Face cache" in run.stdout and "its own tokenizer, 600 ids" in run.stdout
    run = _cli("download", PICKLE, home=hf_home, cwd=tmp_path)
    assert run.returncode == 1 and "pickle checkpoints are never loaded" in run.stderr and "Traceback" not in run.stderr
    run = _cli("download", "not/a/repo", home=hf_home, cwd=tmp_path)
    assert run.returncode == 2 and "neither a preset" in run.stderr
    run = _cli("generate", "Once upon a time", "--model", OWN, "--max-new-tokens", "8", home=hf_home, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    tokenizer = gpt2.load_tokenizer(folder_of(hf_home, OWN))
    model = gpt2.load_model(str(folder_of(hf_home, OWN)), compile=False)
    ids = gpt2.generate(model, torch.tensor([tokenizer.encode("Once upon a time")]), 8)[0].tolist()
    assert run.stdout == tokenizer.decode(ids) + "\n"
