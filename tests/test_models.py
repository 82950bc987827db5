import pytest
import torch

from fmnist.checkpoint import load_model, save_model
from fmnist.errors import ConfigError
from fmnist.models import (
    MODELS,
    build_model,
    clean_state_dict,
    count_parameters,
    flops_per_image,
    model_config,
    unwrap,
)

SMALL = {"mlp": {"hidden": 32}, "cnn": {"widths": [8, 8, 16]},
         "resnet": {"widths": [8, 8, 16], "blocks": [1, 1, 1]}}


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_shape_and_finite(name):
    torch.manual_seed(0)
    model = build_model(name, SMALL.get(name))
    out = model(torch.randn(5, 1, 28, 28))
    assert out.shape == (5, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(MODELS))
def test_checkpoint_round_trip_gives_identical_outputs(name, tmp_path):
    torch.manual_seed(0)
    model = build_model(name, SMALL.get(name))
    # One training step so BatchNorm running stats differ from their defaults.
    model.train()
    model(torch.randn(16, 1, 28, 28)).sum().backward()
    model.eval()
    save_model(tmp_path, model, {"classes": [str(i) for i in range(10)],
                                 "normalize": {"mean": 0.0, "std": 1.0}})
    loaded, meta = load_model(tmp_path)
    x = torch.randn(7, 1, 28, 28)
    assert meta["model"] == name
    assert meta["model_config"] == model_config(model)
    assert torch.equal(model(x), loaded(x))


def test_mlp_is_the_quickstart_network():
    model = build_model("mlp")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {
        "linear_relu_stack.0.weight": (512, 784), "linear_relu_stack.0.bias": (512,),
        "linear_relu_stack.2.weight": (512, 512), "linear_relu_stack.2.bias": (512,),
        "linear_relu_stack.4.weight": (10, 512), "linear_relu_stack.4.bias": (10,),
    }
    assert count_parameters(model) == 669_706


def test_flops_per_image_counts_the_three_linear_layers():
    # 2 FLOPs per multiply-accumulate of the three linear layers
    assert flops_per_image(build_model("mlp")) == 2 * (784 * 512 + 512 * 512 + 512 * 10)


@pytest.mark.parametrize("name", list(MODELS))
def test_print_model_shows_the_layers_then_parameters_and_flops(name, capsys):
    model = build_model(name, SMALL.get(name))
    print(model)
    shown = capsys.readouterr().out
    first_layer = next(m for m in model.modules() if not list(m.children()))
    assert repr(first_layer) in shown  # the layers, as torch prints them
    last = shown.strip().splitlines()[-1]  # then one line of size and cost
    assert f"{count_parameters(model):,} parameters" in last and "MFLOPs per image" in last


def last_conv_side(model) -> int:
    """The height of the maps the model's last conv runs on, for one 28x28 image."""
    seen = []
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    handle = last.register_forward_hook(lambda m, i, out: seen.append(out.shape[-1]))
    model.eval()(torch.randn(1, 1, 28, 28))
    handle.remove()
    return seen[0]


def test_cnn_pool_last_stage_runs_the_last_conv_on_3x3_and_old_configs_keep_7x7(tmp_path):
    pooled = build_model("cnn", {"widths": [8, 8, 16], "pool_last_stage": True})
    plain = build_model("cnn", {"widths": [8, 8, 16]})  # a checkpoint's config from before the option
    assert (last_conv_side(pooled), last_conv_side(plain)) == (3, 7)
    assert flops_per_image(pooled) < flops_per_image(plain)
    # pooling has no weights, so only the saved config tells the two apart
    save_model(tmp_path, pooled, {"classes": [str(i) for i in range(10)],
                                  "normalize": {"mean": 0.0, "std": 1.0}})
    loaded, meta = load_model(tmp_path)
    assert meta["model_config"]["pool_last_stage"] is True and last_conv_side(loaded) == 3


def test_unknown_model_and_option_name_the_valid_ones():
    with pytest.raises(ConfigError, match="Valid models: mlp, cnn, resnet"):
        build_model("vgg")
    with pytest.raises(ConfigError, match="Unknown option.*depth.*Valid"):
        build_model("cnn", {"depth": 3})


def test_prefixes_of_ddp_and_compile_are_stripped():
    state = {"module._orig_mod.head.weight": torch.zeros(1), "_orig_mod.x": torch.ones(1)}
    assert set(clean_state_dict(state)) == {"head.weight", "x"}
    inner = build_model("mlp", {"hidden": 4})
    wrapper = torch.nn.Module()
    wrapper.module = inner
    assert unwrap(wrapper) is inner
