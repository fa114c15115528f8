"""A recipe owns every training choice (network, conditioning, EMA, optimiser, batch size): what it
sets reaches the model's config, the training loop and its records, and nothing else changes;
the paper recipes' networks see what their papers' networks see; the deviations table is the
command's output."""
import copy
import json

import pytest
import torch

from diffusion_core.frameworks import DiffusionModel
from diffusion_core.models.networks import UNet
from diffusion_core.training.ema import ExponentialEMA, build_ema
from flows.config.deviations import NO_REASON, deviations_markdown, run_settings
from flows.config.params import ConfigError, load_params, parse_params
from flows.config.recipes import lay_over, recipe_settings, setting_value, with_setting
from flows.stages.train import model_config
from tests.tiny import ROOT, in_workspace, tiny_params

DIGITS = {"kind": "image", "shape": [1, 8, 8]}
# a recipe that sets one value of each training choice, none of them the shared default
PROBE = {"network": {"dropout": 0.2, "attention": [1]}, "conditioning": "ddpm",
         "ema": {"kind": "exponential", "rate": 0.9}, "batch_size": 16,
         "optimizer": {"lr": 3e-4, "warmup_steps": 3, "lr_schedule": "constant", "grad_clip": None}}


def _with_recipe(data: dict, framework: str, name: str, recipe: dict) -> dict:
    data = copy.deepcopy(data)
    data[framework]["recipes"] = {**data[framework]["recipes"], name: recipe}
    return data


def _recording(model: DiffusionModel) -> list:
    """The (input, condition) of every call of the model's network, recorded by a forward hook."""
    calls = []
    model.denoiser.net.register_forward_hook(lambda net, args, out: calls.append(args))
    return calls


def test_ddpm_paper_network_receives_x_t_and_t():
    """Ho et al. (2020): the network sees the chain's x_t and the timestep index t, not EDM's
    rescaled input and log noise level: on the chain's rungs directly, and in the loss and the
    DDIM sampler, which never name the conditioning."""
    params = load_params(ROOT / "params.yaml")
    model = DiffusionModel(model_config(params, "ddpm-paper", DIGITS))
    calls, chain = _recording(model), model.chain
    x0, eps = torch.rand(4, 1, 8, 8) * 2 - 1, torch.randn(4, 1, 8, 8)
    index = torch.tensor([0, 10, 500, 999])
    alpha, sigma = chain.alpha_sigma(index)
    x_t = alpha[:, None, None, None] * x0 + sigma[:, None, None, None] * eps
    with torch.no_grad():
        model.denoiser(x_t, alpha, sigma)
    x_in, t = calls[-1]
    torch.testing.assert_close(x_in, x_t)  # x_t itself: no c_in, no division by alpha
    torch.testing.assert_close(t, index.float(), atol=2e-3, rtol=0)
    model.loss(x0, torch.Generator().manual_seed(0))
    t = calls[-1][1]
    assert ((t - t.round()).abs() < 2e-3).all() and 0 <= t.min() and t.max() <= 999
    calls.clear()
    model.sample(2, (1, 8, 8), {"name": "ddim", "steps": 5})
    assert len(calls) == 5 and all(((c - c.round()).abs() < 2e-3).all() for _, c in calls)
    assert model.denoiser.net.embed.freqs[0] == 1.0  # DDPM's sinusoids: frequencies 1 .. 1/10000


def test_a_model_saved_without_conditioning_loads_as_edm(tmp_path):
    """Models saved before the choice existed see EDM's c_in x / alpha and ln(s) / 4, as then."""
    params = load_params(ROOT / "params.yaml")
    config = model_config(params, "ddpm-edm", DIGITS)
    model = DiffusionModel(config)
    legacy = {k: v for k, v in config.items() if k != "conditioning"}
    legacy["network"] = {k: v for k, v in config["network"].items() if k not in ("dropout", "attention", "embedding")}
    model.save(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps(legacy))
    loaded, x = DiffusionModel.load(tmp_path), torch.randn(3, 1, 8, 8)
    alpha, sigma = torch.full((3,), 0.6), torch.full((3,), 0.8)
    calls = _recording(loaded)
    with torch.no_grad():
        torch.testing.assert_close(loaded.denoiser(x, alpha, sigma).x0, model.denoiser(x, alpha, sigma).x0)
    s = sigma / alpha
    torch.testing.assert_close(calls[0][1], torch.log(s) / 4)
    torch.testing.assert_close(calls[0][0], x / 0.6 / torch.sqrt(s[0] ** 2 + 0.25))


def test_dropout_adds_no_weights_and_attention_levels_add_blocks():
    """A saved network's state dict is unchanged by the new settings at their defaults."""
    plain = UNet(base=16, mults=(1, 2), blocks=1, emb_dim=32)
    dropped = UNet(base=16, mults=(1, 2), blocks=1, emb_dim=32, dropout=0.1)
    attended = UNet(base=16, mults=(1, 2), blocks=1, emb_dim=32, attention=(1,))
    assert plain.state_dict().keys() == dropped.state_dict().keys()
    extra = set(attended.state_dict()) - set(plain.state_dict())
    assert extra and all(".attn." in key for key in extra)
    assert attended(torch.randn(2, 1, 8, 8), torch.zeros(2)).shape == (2, 1, 8, 8)


def test_the_exponential_ema_is_its_closed_form():
    """avg_T = rate^T w_0 + (1 - rate) sum_k rate^(T - k) w_k (Ho et al. 2020's average)."""
    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(net.weight, 2.0)
    ema, rate, weights = build_ema(net, {"kind": "exponential", "rate": 0.9}), 0.9, [2.0]
    assert isinstance(ema, ExponentialEMA)
    for step in range(1, 8):
        with torch.no_grad():
            net.weight.fill_(float(step**2))
        weights.append(float(step**2))
        ema.update(net)
    total = len(weights) - 1
    expected = rate**total * weights[0] + (1 - rate) * sum(rate ** (total - k) * weights[k] for k in range(1, total + 1))
    assert ema.model.weight.item() == pytest.approx(expected, rel=1e-6)
    restored = build_ema(net, {"kind": "exponential", "rate": 0.5})
    restored.load_state_dict(ema.state_dict())
    assert restored.rate == 0.9 and restored.steps == 7


def test_a_recipe_changes_exactly_the_choices_it_sets_in_the_resolved_config():
    data = _with_recipe(tiny_params("digits"), "ddpm", "probe", PROBE)
    params = parse_params(data)
    base, probe = params.training("ddpm", "image").record(), params.training("ddpm-probe", "image").record()
    changed = {f"{group}.{k}" for group in ("network", "optimizer") for k in base[group] if base[group][k] != probe[group][k]}
    changed |= {k for k in ("conditioning", "embedding", "ema", "batch_size") if base[k] != probe[k]}
    assert changed == {"network.dropout", "network.attention", "conditioning", "embedding", "ema", "batch_size",
                       "optimizer.lr", "optimizer.warmup_steps", "optimizer.lr_schedule", "optimizer.grad_clip"}
    assert probe["optimizer"]["grad_clip"] is None and probe["ema"] == {"kind": "exponential", "rate": 0.9}


@pytest.mark.parametrize("recipe, field", [
    ({"ema": {"kind": "exponential", "rate": 1.5}}, "ddpm.recipes.paper.ema.rate"),
    ({"ema": {"kind": "exponential"}}, "ddpm.recipes.paper.ema.rate"),
    ({"ema": {"kind": "linear"}}, "ddpm.recipes.paper.ema.kind"),
    ({"optimizer": {"lr": -1.0}}, "ddpm.recipes.paper.optimizer.lr"),
    ({"optimizer": {"momentum": 0.9}}, "ddpm.recipes.paper.optimizer.momentum"),
    ({"optimizer": {"lr_schedule": "linear"}}, "ddpm.recipes.paper.optimizer.lr_schedule"),
    ({"optimizer": {"warmup_steps": -2}}, "ddpm.recipes.paper.optimizer.warmup_steps"),
    ({"lr_schedule": "cosine", "optimizer": {"lr_schedule": "constant"}}, "ddpm.recipes.paper.optimizer.lr_schedule"),
    ({"network": {"dropout": 1.5}}, "ddpm.recipes.paper.network.dropout"),
    ({"network": {"attention": [2]}}, "ddpm.recipes.paper.network.attention"),
    ({"network": 3}, "ddpm.recipes.paper.network"),
    ({"conditioning": "v2"}, "ddpm.recipes.paper.conditioning"),
    ({"batch_size": 1}, "ddpm.recipes.paper.batch_size"),
])
def test_a_bad_recipe_choice_is_refused_naming_its_field(recipe, field):
    data = _with_recipe(tiny_params("digits"), "ddpm", "paper", recipe)
    with pytest.raises(ConfigError, match=f"^{field}"):
        parse_params(data)


def test_ddpm_conditioning_needs_a_chain():
    data = _with_recipe(tiny_params("digits"), "ncsn", "paper", {"conditioning": "ddpm"})
    with pytest.raises(ConfigError, match="^ncsn.recipes.paper.conditioning: .*vp"):
        parse_params(data)


def test_a_ladder_step_lays_one_setting_of_one_recipe_over_another():
    """What the ablation ladder builds on: a setting read from one recipe and laid over another
    changes that setting of the resolved run and nothing else."""
    data = tiny_params("digits")
    paper, edm = data["ddpm"]["recipes"]["paper"], data["ddpm"]["recipes"]["edm"]
    assert lay_over({"optimizer": {"lr": 1.0, "grad_clip": 2.0}, "ema": {"kind": "power", "gamma": 3.0}},
                    {"optimizer": {"lr": 5.0}, "ema": {"kind": "exponential", "rate": 0.5}}) == {
        "optimizer": {"lr": 5.0, "grad_clip": 2.0}, "ema": {"kind": "exponential", "rate": 0.5}}
    schedule = setting_value(edm, "optimizer.lr_schedule")
    step = with_setting(paper, "optimizer.lr_schedule", schedule)
    params = parse_params(_with_recipe(data, "ddpm", "step", step))
    before, after = run_settings(params, "ddpm-paper", "image"), run_settings(params, "ddpm-step", "image")
    assert {k for k in before if before[k] != after[k]} == {"optimizer.lr_schedule"}
    assert after["optimizer.lr_schedule"] == "cosine" and paper["optimizer"]["lr_schedule"] == "constant"
    settings = recipe_settings(params.ddpm)
    assert {"noise", "sampler", "conditioning", "ema", "optimizer.lr", "network.dropout", "batch_size"} <= set(settings)
    assert "lr_schedule" not in settings and "recipes" not in settings


def test_docs_recipes_md_is_the_commands_output(capsys):
    """docs/recipes.md is `diffusion recipes` on the default params, and every deviation in it
    carries its reason."""
    from flows.entry.cli import main

    assert main(["recipes", "--params", str(ROOT / "params.yaml")]) == 0
    out = capsys.readouterr().out
    assert out == (ROOT / "docs/recipes.md").read_text(), "run: diffusion recipes > docs/recipes.md"
    assert NO_REASON not in out
    for key in ("ddpm-paper", "ncsn-paper", "sde-paper", "ddpm-edm", "ncsn-edm", "sde-edm"):
        assert f"### `{key}`" in out
    assert out == deviations_markdown(load_params(ROOT / "params.yaml")) + "\n"


@pytest.mark.slow
def test_a_trained_recipe_records_exactly_its_choices(tmp_path):
    """A tiny Ray Train run of a recipe setting network, conditioning, EMA, optimiser and batch
    size: its model.json and train_summary.json differ from what the framework alone records
    (the shared defaults) in those settings alone, and its MLflow run logs the recipe's."""
    from flows.stages import data as data_stage
    from flows.stages import train as train_stage
    from flows.tracking import runs as tracking

    data = _with_recipe(tiny_params("digits"), "ddpm", "probe", PROBE)
    data["train"]["frameworks"] = ["ddpm", "ddpm-probe"]
    data["ray"]["num_workers"] = 1
    with in_workspace(tmp_path):
        params = parse_params(data)
        data_stage.prepare(params)
        summary = train_stage.train(params, "ddpm-probe")
        probe = json.loads((tmp_path / "models/ddpm-probe/model.json").read_text())
        written = json.loads((tmp_path / "models/ddpm-probe/train_summary.json").read_text())
        run = tracking.client().get_run(tracking.load_run_id(tmp_path / "models/ddpm-probe"))
    base = model_config(params, "ddpm", DIGITS)
    assert {k for k in base | probe if base.get(k) != probe.get(k)} == {"recipe", "conditioning", "network"}
    assert {k for k in base["network"] if base["network"][k] != probe["network"][k]} == {"dropout", "attention", "embedding"}
    shared, recipe = params.training("ddpm", "image").record(), written["recipe"]
    assert {k for k in recipe if shared.get(k) != recipe[k]} == {
        "name", "network", "conditioning", "embedding", "ema", "optimizer", "batch_size"}
    assert recipe["optimizer"] == {"lr": 3e-4, "warmup_steps": 3, "lr_schedule": "constant", "grad_clip": None}
    assert recipe["ema"] == {"kind": "exponential", "rate": 0.9} and recipe["batch_size"] == 16
    assert summary["steps"] == params.image.steps
    assert run.data.params["recipe.ema.kind"] == "exponential" and run.data.params["recipe.batch_size"] == "16"
