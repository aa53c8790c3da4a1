"""Registry and factory behaviour: names, errors, options, weights files."""

from __future__ import annotations

import pytest
import torch

import backbones
from backbones import registry
from backbones.weights import CheckpointMismatchError


def test_names_follow_style_and_cards_are_complete():
    names = backbones.list_models()
    assert names, "registry is empty"
    for name in names:
        assert name == name.lower() and " " not in name and "-" not in name
        card = backbones.model_card(name)
        assert card.paper and card.table and card.params > 0
        assert set(card.twins) <= {"timm", "torchvision"}


def test_list_models_pattern():
    names = backbones.list_models()
    prefix = names[0][:4]
    assert backbones.list_models(prefix + "*") == [n for n in names if n.startswith(prefix)]
    assert backbones.list_models("no_such_model*") == []


def test_unknown_model_lists_close_matches():
    name = backbones.list_models()[0]
    with pytest.raises(KeyError, match=f"unknown model '{name}x' \\(did you mean .*'{name}'"):
        backbones.create_model(name + "x")


def test_unknown_option_names_valid_ones():
    name = backbones.list_models()[0]
    with pytest.raises(TypeError, match="'num_clases' \\(did you mean 'num_classes'\\?\\).*Valid options"):
        backbones.create_model(name, num_clases=3)


def test_bad_norm_and_frozen_stages_and_level():
    name = backbones.list_models(detection_ready=True)[0]
    with pytest.raises(ValueError, match="norm='batchnorm' is not valid.*'bn', 'frozen_bn', 'sync_bn', 'gn'"):
        backbones.create_model(name, norm="batchnorm")
    with pytest.raises(ValueError, match="frozen_stages=9"):
        backbones.create_model(name, frozen_stages=9)
    with pytest.raises(ValueError, match="unknown feature level 'p3'.*c2"):
        backbones.create_model(name, features_only=True, out_features=("p3",))


def test_duplicate_registration_names_both_sites():
    name = backbones.list_models()[0]
    entry = registry._REGISTRY[name]
    with pytest.raises(ValueError, match=f"{name}.*registered twice: first at .*, again at .*test_registry.py"):
        registry.register_model(name, entry.builder, entry.card)


def test_backbones_imports_only_torch():
    import subprocess
    import sys

    mods = ("timm", "torchvision", "detectron2", "lightning", "hydra")
    code = f"import sys, backbones; print([m for m in {mods!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_out_channels_known_before_forward_and_ordered():
    name = backbones.list_models(detection_ready=True)[0]
    f = backbones.create_model(name, features_only=True, out_features=["c5", "c3"])
    assert list(f.out_channels) == ["c3", "c5"]


def test_own_state_dict_roundtrip_and_mismatch(tmp_path):
    a, b = backbones.list_models(detection_ready=True)[:2]
    m = backbones.create_model(a)
    path = tmp_path / "w.pth"
    torch.save(m.state_dict(), path)
    m2 = backbones.create_model(a, pretrained=str(path))
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k])
    with pytest.raises(CheckpointMismatchError, match="does not fit.*(missing|unexpected|shape)"):
        backbones.create_model(b, pretrained=str(path))


def test_pickle_that_runs_code_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    name = backbones.list_models()[0]
    with pytest.raises(RuntimeError, match="weights_only=True"):
        backbones.create_model(name, pretrained=str(path))


def test_missing_weights_file_named():
    name = backbones.list_models()[0]
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        backbones.create_model(name, pretrained="nope.pth")


def test_new_classifier_size_when_fine_tuning(tmp_path):
    name = backbones.list_models(detection_ready=True)[0]
    m = backbones.create_model(name)
    path = tmp_path / "w.pth"
    torch.save(m.state_dict(), path)
    m2 = backbones.create_model(name, pretrained=str(path), num_classes=3)
    assert m2(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_channels_last_must_be_a_bool():
    with pytest.raises(TypeError, match="channels_last='yes' must be True or False"):
        backbones.create_model("mobilenet_v1_x0_25", channels_last="yes")


def test_readme_zoo_table_is_the_registry_table():
    """The README's zoo table is what `tools/model_zoo.py --write-readme` writes from the registry today."""
    from pathlib import Path

    from backbones.zoo import markdown_table, replace_between_markers, zoo_rows

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert replace_between_markers(readme, markdown_table(zoo_rows())) == readme, (
        "README zoo table is stale: run python tools/model_zoo.py --write-readme"
    )


def test_zoo_plot_draws_every_model_with_a_published_top1(tmp_path):
    """`tools/model_zoo.py --plot`: a PNG whose mult-adds and parameter panels each hold one point per model whose
    card has a top-1, at the table's measured counts; the README embeds the committed picture."""
    from pathlib import Path

    from PIL import Image

    pytest.importorskip("matplotlib", reason="the zoo plot needs matplotlib (the dev extra)")
    from backbones.zoo import zoo_rows
    from backbones.zoo_plot import plot_zoo

    with_top1 = {n: backbones.model_card(n).top1 for n in backbones.list_models() if backbones.model_card(n).top1}
    path = tmp_path / "zoo.png"
    fig = plot_zoo(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
        assert im.size[0] > 800 and im.size[1] > 500
    rows = {r.name: r for r in zoo_rows()}
    for col, key in ((0, "macs"), (1, "params")):
        axes = fig.axes[col::2]
        points = sorted(tuple(p) for ax in axes for c in ax.collections for p in c.get_offsets())
        assert len(points) == len(with_top1)
        expected = sorted((getattr(rows[n], key) / 1e6, top1) for n, top1 in with_top1.items())
        assert points == pytest.approx(expected)
        assert sorted(t.get_text() for ax in axes for t in ax.texts) == sorted(with_top1)
        assert all(ax.get_xscale() == "log" for ax in axes)
    with pytest.raises(ValueError, match="suffix of 'zoo.pnq'.*did you mean 'png'"):
        plot_zoo("zoo.pnq")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "](docs/zoo.png)" in readme


def test_ci_runs_the_readme_test_command():
    """CI (.ci/run) runs the quick start's test command verbatim, install included, after the lint."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    quick = root.joinpath("README.md").read_text().split("## Quick start", 1)[1].split("```bash", 1)[1].split("```")[0]
    test_cmd = [line for line in quick.strip().splitlines() if "pytest" in line]
    ci = root.joinpath(".ci", "run").read_text().splitlines()
    assert len(test_cmd) == 1 and test_cmd[0] in ci, (test_cmd, ci)
    assert "ruff check ." in ci and ci.index("ruff check .") < ci.index(test_cmd[0])


def test_benchmark_alternates_the_order_of_its_contenders():
    from backbones.benchmark import interleaved

    calls = []
    wall, cpu = interleaved([lambda: calls.append("a"), lambda: calls.append("b")], repeats=3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert [len(w) for w in wall] == [3, 3] == [len(c) for c in cpu] and min(map(min, wall)) >= 0


def test_card_presets_are_stated_once():
    """CIFAR cards all carry the CIFAR preset (32 px, 10 classes, CIFAR mean/std, no crop, not detection-ready), and a
    card cannot restate a preset field or name an unknown preset."""
    cifar = registry.CARD_PRESETS["cifar"]
    names = backbones.list_models(detection_ready=False)
    assert len(names) >= 10  # 6 DenseNet, 2 NASNet-A, 2 ENAS today
    for name in names:
        card = backbones.model_card(name)
        assert {k: getattr(card, k) for k in cifar} == cifar, name
    card = registry.make_card("inception", family="x", paper="p", table="t", params=1, macs=None)
    assert card.mean == card.std == (0.5, 0.5, 0.5) and card.input_size == 224
    with pytest.raises(TypeError, match="already sets num_classes"):
        registry.make_card("cifar", family="x", paper="p", table="t", params=1, macs=None, num_classes=10)
    with pytest.raises(ValueError, match="preset='cifar10' is not valid .*did you mean 'cifar'"):
        registry.make_card("cifar10", family="x", paper="p", table="t", params=1, macs=None)
