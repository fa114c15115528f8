"""infra/ ships no password and no open door, read from the files (no Docker here): each compose
recipe refuses to start until every secret is set, naming the one missing, as `docker compose
config` does; with them set, MLflow runs its basic-auth app and Prefect asks every client for its
auth string; the Ray recipes turn on token authentication and keep their ports off the outside.
The threat model in docs/security.md names these tests."""
import configparser
import re
from pathlib import Path

import pytest
import yaml

from tests.tiny import ROOT

INFRA = ROOT / "infra"
# compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}
REFERENCE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<bare>\w+))")
SECRETS = {"mlflow": {"POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD",
                      "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"},
           "prefect": {"POSTGRES_PASSWORD", "PREFECT_API_AUTH_STRING"}}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH|KEY|ROOT_USER")


class MissingVariable(ValueError):
    """What `docker compose config` reports for ${VAR:?message} with VAR unset or empty."""


def _interpolate(value: str, env: dict, where: str) -> str:
    def substitute(match):
        if match["escaped"]:
            return "$"
        name, op, arg = match["name"] or match["bare"], match["op"], match["arg"]
        given = env.get(name)
        if op in (":?", "?") and (not given if op == ":?" else name not in env):
            raise MissingVariable(f"error while interpolating {where}: required variable {name} "
                                  f"is missing a value: {arg}")
        if op == ":-" and not given or op == "-" and name not in env:
            return arg
        return given or ""
    return REFERENCE.sub(substitute, value)


def compose_config(path: Path, env: dict):
    """The compose file as `docker compose config` resolves it against ``env`` (compose
    interpolates the parsed YAML's values, so comments are left alone)."""
    def walk(node, where):
        if isinstance(node, dict):
            return {key: walk(value, f"{where}.{key}") for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item, f"{where}[{i}]") for i, item in enumerate(node)]
        return _interpolate(node, env, where) if isinstance(node, str) else node
    return walk(yaml.safe_load(path.read_text()), "")


def _references(path: Path) -> list[tuple[str, str | None, str]]:
    """Every ${VAR...} of the file as (name, operator, argument)."""
    return [(m["name"] or m["bare"], m["op"], m["arg"]) for m in REFERENCE.finditer(path.read_text())
            if not m["escaped"]]


def _secrets_set() -> dict:
    return {name: f"value-of-{name.lower()}" for names in SECRETS.values() for name in names}


@pytest.mark.parametrize("recipe", sorted(SECRETS))
def test_compose_refuses_to_start_without_each_secret_naming_it(recipe):
    path = INFRA / recipe / "compose.yaml"
    with pytest.raises(MissingVariable, match=r"required variable \w+ is missing a value: set it in "
                                              rf"infra/{recipe}/\.env"):
        compose_config(path, {})
    for name in sorted(SECRETS[recipe]):
        env = {key: value for key, value in _secrets_set().items() if key != name}
        with pytest.raises(MissingVariable, match=rf"required variable {name} is missing a value"):
            compose_config(path, env)
        with pytest.raises(MissingVariable, match=rf"required variable {name} is missing"):
            compose_config(path, {**env, name: ""})  # ':?' refuses an empty value too
    compose_config(path, _secrets_set())  # all set: it resolves


@pytest.mark.parametrize("recipe", sorted(SECRETS))
def test_no_secret_has_a_default_value(recipe):
    path = INFRA / recipe / "compose.yaml"
    for name, op, arg in _references(path):
        if SECRET_NAME.search(name):
            assert op == ":?" or (op == ":-" and arg == ""), \
                f"{path}: ${{{name}{op or ''}{arg or ''}}} gives a secret a default"
    for known in ("mlflow-secret", ":-mlflow}", ":-prefect}", "minioadmin"):
        assert known not in path.read_text(), f"{path} still holds the old default {known!r}"


def test_mlflow_runs_its_basic_auth_app_with_a_store_of_users():
    services = compose_config(INFRA / "mlflow/compose.yaml", _secrets_set())["services"]
    server = services["mlflow"]
    assert "--app-name=basic-auth" in server["command"]
    env = server["environment"]
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == "value-of-mlflow_auth_admin_password"
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == "value-of-mlflow_flask_server_secret_key"
    mounts = dict(v.split(":")[:2] for v in server["volumes"])  # source: target
    ini_source = next(src for src, dst in mounts.items() if dst == env["MLFLOW_AUTH_CONFIG_PATH"])
    config = configparser.ConfigParser()
    config.read(INFRA / "mlflow" / ini_source)
    assert config["mlflow"]["default_permission"] in ("READ", "NO_PERMISSIONS")
    assert not config["mlflow"].get("admin_password"), "the ini file must not hold the admin password"
    store = config["mlflow"]["database_uri"].removeprefix("sqlite:///")
    assert any(store.startswith(dst + "/") for dst in mounts.values()), f"{store} is on no volume"
    assert "flask-wtf" in (INFRA / "mlflow/Dockerfile").read_text().lower()


def test_prefect_server_asks_for_the_auth_string_and_its_clients_send_it():
    services = compose_config(INFRA / "prefect/compose.yaml", _secrets_set())["services"]
    expected = "value-of-prefect_api_auth_string"
    assert services["server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"] == expected
    for client in ("deploy", "worker"):
        assert services[client]["environment"]["PREFECT_API_AUTH_STRING"] == expected, client


def test_ray_recipes_require_the_token_and_keep_their_ports_private():
    launcher = yaml.safe_load((INFRA / "ray/cluster-aws.yaml").read_text())
    head = " ".join(launcher["head_start_ray_commands"])
    assert "0.0.0.0" not in head and "--dashboard-host=$(hostname -I" in head
    assert "-e RAY_AUTH_MODE=token" in launcher["docker"]["run_options"]
    assert launcher["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    cluster = next(d for d in yaml.safe_load_all((INFRA / "kuberay/raycluster.yaml").read_text())
                   if d["kind"] == "RayCluster")["spec"]
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP"
    job = yaml.safe_load((INFRA / "kuberay/rayjob.yaml").read_text())
    submitter = job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    env = {e["name"]: e for e in submitter["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == cluster["authOptions"]["secretName"]


def test_the_infra_readme_says_how_to_set_every_secret():
    readme = (INFRA / "README.md").read_text()
    for name in sorted(set().union(*SECRETS.values()) | {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                                                         "RAY_AUTH_TOKEN", "RAY_AUTH_MODE"}):
        assert name in readme, f"infra/README.md does not say how to set {name}"
    assert "docs/security.md" in readme


def test_every_row_of_the_threat_model_names_tests_that_exist():
    """docs/security.md: each row of the threat model names at least one test, and every test it
    names (`tests/file.py::name`, or `::name` for the file named before it in the row) exists."""
    import ast

    text = (ROOT / "docs/security.md").read_text()
    table = text.split("## The threat model, row by row", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| who ")]
    assert len(rows) >= 8, "the threat model has fewer rows than the components it covers"
    for row in rows:
        cell = row.rstrip(" |").rsplit(" | ", 1)[-1]
        named, current = [], None
        for file, name in re.findall(r"(tests/\w+\.py)?::(\w+)", cell):
            current = file or current
            named.append((current, name))
        assert named, f"a row names no test: {row[:80]}"
        for file, name in named:
            tree = ast.parse((ROOT / file).read_text())
            assert name in {f.name for f in tree.body if isinstance(f, ast.FunctionDef)}, f"{file}::{name}"
