"""`embedpipe deploy`: rendering, validation, the no-cluster path, and the kubernetes client's requests captured by
a loopback HTTP server that speaks enough of the Kubernetes API to accept a create (and a conflicting one)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from typer.testing import CliRunner

from embedpipe.cli import app
from embedpipe.deploy.kserve import render_inference_service, render_serving_runtime, vllm_hf_overrides
from embedpipe.deploy.validate import validate_document

runner = CliRunner()


def flat(text: str) -> str:
    """Typer's rich error panels wrap lines inside box characters: join them back into one line."""
    return " ".join(text.replace("│", " ").replace("╭", " ").replace("╰", " ").replace("─", " ").split())


def test_inference_service_rendering():
    isvc = render_inference_service("nemotron-embed", "s3://models/merged", gpus=2, min_replicas=1, max_replicas=3)
    predictor = isvc["spec"]["predictor"]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["metadata"]["namespace"] == "embedpipe"
    assert predictor["model"]["storageUri"] == "s3://models/merged"
    assert predictor["model"]["runtime"] == "embedpipe-vllm-embed"
    assert predictor["model"]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 3)
    assert predictor["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"}
    assert predictor["serviceAccountName"] == "embedpipe-model-reader"
    assert validate_document(isvc) == []
    cpu = render_inference_service("cpu-embed", "pvc://models/merged", runtime="embedpipe", gpus=0, min_replicas=0)
    assert "nodeSelector" not in cpu["spec"]["predictor"]
    assert "nvidia.com/gpu" not in cpu["spec"]["predictor"]["model"]["resources"]["limits"]
    assert validate_document(cpu) == []


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"name": "Bad_Name", "storage_uri": "s3://b/m"}, "invalid InferenceService name"),
        ({"name": "ok", "storage_uri": "/local/path"}, "storage URI"),
        ({"name": "ok", "storage_uri": "s3://b/m", "runtime": "tgi"}, "unknown runtime"),
        ({"name": "ok", "storage_uri": "s3://b/m", "gpus": 0}, "needs a GPU"),
        ({"name": "ok", "storage_uri": "s3://b/m", "min_replicas": 3, "max_replicas": 2}, "replicas"),
    ],
)
def test_rendering_refuses_bad_values(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        render_inference_service(**kwargs)


def test_vllm_overrides_follow_the_export_config(tiny_encoder):
    config = json.loads((tiny_encoder / "config.json").read_text())
    assert config["architectures"] == ["LlamaBidirectionalModel"] and config["pooling"] == "mean"
    assert vllm_hf_overrides(tiny_encoder) == {"pooling": "avg", "is_causal": False}
    args = render_serving_runtime("vllm")["spec"]["containers"][0]["args"]
    assert '--hf-overrides={"pooling":"avg","is_causal":false}' in args
    assert "--runner=pooling" in args and "--convert=embed" in args and "--trust-remote-code" in args
    assert '--pooler-config={"pooling_type":"MEAN","normalize":true}' in args  # the export's mean + L2


def test_vllm_runtime_keeps_the_image_user_and_gets_shared_memory():
    # vllm/vllm-openai has no USER (runs as root); runAsNonRoot would keep the pod from starting (kserve#5666)
    runtime = render_serving_runtime("vllm")
    container = runtime["spec"]["containers"][0]
    assert "runAsNonRoot" not in container["securityContext"] and "runAsUser" not in container["securityContext"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert runtime["spec"]["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}]
    ours = render_serving_runtime("embedpipe")["spec"]["containers"][0]
    assert ours["securityContext"]["runAsNonRoot"] is True  # our serve image sets USER 1000
    with pytest.raises(ValueError, match="LlamaBidirectionalModel"):
        vllm_hf_overrides({"architectures": ["LlamaForCausalLM"], "pooling": "mean"})
    with pytest.raises(ValueError, match="no vLLM equivalent"):
        vllm_hf_overrides({"architectures": ["LlamaBidirectionalModel"], "pooling": "weighted"})


def test_serving_runtimes_validate_and_name_the_images():
    ours = render_serving_runtime("embedpipe", image_registry="registry.example/ml", image_tag="1.2.3")
    assert ours["spec"]["containers"][0]["image"] == "registry.example/ml/embedpipe-serve:1.2.3"
    assert ours["spec"]["containers"][0]["args"][:2] == ["serve", "/mnt/models"]
    for runtime in ("vllm", "embedpipe"):
        assert validate_document(render_serving_runtime(runtime)) == []


def test_deploy_print_and_no_cluster_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    printed = runner.invoke(app, ["deploy", "s3://models/merged", "--print", "--with-runtime"])
    assert printed.exit_code == 0, printed.output
    docs = list(yaml.safe_load_all(printed.stdout))
    assert [d["kind"] for d in docs] == ["ServingRuntime", "InferenceService"]
    no_cluster = runner.invoke(app, ["deploy", "s3://models/merged", "--name", "emb", "--output", "json"])
    assert no_cluster.exit_code == 0, no_cluster.output
    assert "no kubeconfig" in no_cluster.stderr
    assert json.loads(no_cluster.stdout)["metadata"]["name"] == "emb"
    missing = runner.invoke(app, ["deploy", "s3://m/x", "--kubeconfig", str(tmp_path / "nope")])
    assert missing.exit_code != 0 and "does not exist" in flat(missing.output)
    bad = runner.invoke(app, ["deploy", "s3://m/x", "--gpus", "0", "--print"])
    assert bad.exit_code != 0 and "needs a GPU" in flat(bad.output)


def test_deploy_uses_the_recipe_images(tmp_path):
    recipe = tmp_path / "r.yaml"
    from embedpipe.recipe import recipes_dir

    text = (recipes_dir() / "local.yaml").read_text()
    recipe.write_text(text.replace("pipeline:\n", "pipeline:\n  image_registry: reg.example/team\n  image_tag: 9.9.9\n"
                                   "  gpu_node_selector: {pool: a100}\n", 1))
    result = runner.invoke(app, ["deploy", "s3://m/x", "--print", "--runtime", "embedpipe", "--with-runtime",
                                 "--recipe", str(recipe)])
    assert result.exit_code == 0, result.output
    runtime, isvc = yaml.safe_load_all(result.stdout)
    assert runtime["spec"]["containers"][0]["image"] == "reg.example/team/embedpipe-serve:9.9.9"
    assert isvc["spec"]["predictor"]["nodeSelector"] == {"pool": "a100"}


class FakeKubeAPI(BaseHTTPRequestHandler):
    """Accepts creates of custom objects; a second create of the same name conflicts (409) like the real server."""

    store: dict = {}
    log: list = []

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def do_POST(self):  # noqa: N802
        url = urlparse(self.path)
        body = self._body()
        self.log.append(("POST", url.path, parse_qs(url.query), body))
        key = f"{url.path}/{body['metadata']['name']}"
        if key in self.store:
            return self._send(409, {"kind": "Status", "status": "Failure", "reason": "AlreadyExists", "code": 409})
        dry = parse_qs(url.query).get("dryRun") == ["All"]
        stored = {**body, "metadata": {**body["metadata"], "resourceVersion": "1", "uid": "u-1"}}
        if not dry:
            self.store[key] = stored
        self._send(201, stored)

    def do_GET(self):  # noqa: N802
        url = urlparse(self.path)
        self.log.append(("GET", url.path, parse_qs(url.query), None))
        if url.path in self.store:
            return self._send(200, self.store[url.path])
        self._send(404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404})

    def do_PUT(self):  # noqa: N802
        url = urlparse(self.path)
        body = self._body()
        self.log.append(("PUT", url.path, parse_qs(url.query), body))
        if body["metadata"].get("resourceVersion") != self.store[url.path]["metadata"]["resourceVersion"]:
            return self._send(409, {"kind": "Status", "reason": "Conflict", "code": 409})
        self.store[url.path] = {**body, "metadata": {**body["metadata"], "resourceVersion": "2"}}
        self._send(200, self.store[url.path])

    def log_message(self, *args):
        pass


@pytest.fixture()
def fake_cluster(tmp_path):
    FakeKubeAPI.store, FakeKubeAPI.log = {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKubeAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me", "namespace": "embedpipe"}}],
        "users": [{"name": "me", "user": {"token": "test-token"}}],
    }))
    yield kubeconfig
    server.shutdown()


def test_deploy_applies_through_the_kubernetes_client(fake_cluster):
    base = ["deploy", "s3://models/merged", "--name", "emb", "--kubeconfig", str(fake_cluster)]
    dry = runner.invoke(app, [*base, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "validated (server dry run)" in dry.stdout
    method, path, query, body = FakeKubeAPI.log[0]
    assert (method, path) == ("POST", "/apis/serving.kserve.io/v1beta1/namespaces/embedpipe/inferenceservices")
    assert query["dryRun"] == ["All"] and query["fieldManager"] == ["embedpipe"]
    assert body["spec"]["predictor"]["model"]["storageUri"] == "s3://models/merged"
    assert FakeKubeAPI.store == {}  # a dry run stores nothing

    created = runner.invoke(app, base)
    assert created.exit_code == 0 and "InferenceService/emb applied" in created.stdout
    assert "dryRun" not in FakeKubeAPI.log[-1][2]
    # applying again: create conflicts, the client reads the live object and replaces it at its resourceVersion
    again = runner.invoke(app, [*base, "--max-replicas", "8"])
    assert again.exit_code == 0, again.output
    assert [entry[0] for entry in FakeKubeAPI.log[-3:]] == ["POST", "GET", "PUT"]
    live = FakeKubeAPI.store["/apis/serving.kserve.io/v1beta1/namespaces/embedpipe/inferenceservices/emb"]
    assert live["spec"]["predictor"]["maxReplicas"] == 8 and live["metadata"]["resourceVersion"] == "2"


def test_deploy_reports_api_errors(fake_cluster):
    result = runner.invoke(app, ["deploy", "s3://m/x", "--namespace", "other", "--with-runtime",
                                 "--kubeconfig", str(fake_cluster), "--runtime", "embedpipe", "--gpus", "0"])
    assert result.exit_code == 0, result.output
    assert "ServingRuntime/embedpipe-serve applied in namespace other" in result.stdout
