"""The "Use via API" page describes each endpoint's parameters. Gradio 6.31 shows a `gr.api`
endpoint's docstring, up to a line starting "Args:" or "Returns:", as its description (the
parameters' own entries carry only types; an "Args:" section reaches only its MCP schema), so
each docstring describes each parameter there, as "name: ...". Checked in what the page reads."""
from __future__ import annotations

import json
import urllib.request

ENDPOINTS = ("/generate", "/attention", "/next_tokens", "/load_model")


def test_every_parameter_of_every_endpoint_is_described(app_url):
    with urllib.request.urlopen(app_url + "gradio_api/info", timeout=30) as response:
        endpoints = json.load(response)["named_endpoints"]
    assert set(ENDPOINTS) <= set(endpoints)
    for name in ENDPOINTS:
        description = endpoints[name]["description"]
        parameters = [p["parameter_name"] for p in endpoints[name]["parameters"]]
        assert parameters, name
        for parameter in parameters:
            assert f" {parameter}: " in description, f"{name}: {parameter} is not described"
        assert "Returns" in description or name == "/generate", name
