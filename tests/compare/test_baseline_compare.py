"""The sampler comparison on tiny untrained models: rows, NFE, the same noise for every
sampler, the written table/plot/JSON, and argument errors."""
import json

import pytest
import torch

pytest.importorskip("diffusers")
# diffusers builds numpy arrays from tensors the way numpy 2 deprecates
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers.*")

from ntm_engine.compare import compare_samplers, samplers_for  # noqa: E402
from ntm_engine.compare.report import markdown_table, quality_keys  # noqa: E402
from ntm_engine.models import NTM, FlowMatchingModel  # noqa: E402

SMALL = dict(data_shape=(1, 4, 4), steps=2, num_classes=3, width=32, depth=1, heads=2,
             patch_size=2)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    fm = FlowMatchingModel(**SMALL).eval()
    ntm = NTM(**SMALL, transporter_layers=1, transporter_hidden=16).eval()
    ablation = NTM(**SMALL, transporter_layers=0).eval()
    return fm, ntm, ablation


def moments(s):
    return {"frechet_distance_raw": float(s.flatten(1).mean()),
            "std": float(s.std())}


def test_rows_cover_every_sampler_with_its_nfe(models, tmp_path):
    fm, ntm, ablation = models
    y = torch.arange(6) % 3
    rows = compare_samplers(ntm=ntm, fm=fm, ntm_ablation=ablation, quality=moments, labels=y,
                            n=6, steps=(1, 3), schedulers=("flow_euler", "flow_heun"),
                            ablation_steps=(2,), out_dir=tmp_path, progress=False,
                            meta={"machine": "test"})
    got = {(r["sampler"], r["steps"]): r["nfe"] for r in rows}
    assert got == {("flow_euler", 1): 1, ("flow_euler", 3): 3, ("flow_heun", 1): 1,
                   ("flow_heun", 3): 5, ("ntm", 2): 2, ("ntm_identity_transporter", 2): 2}
    assert all(r["ms_per_sample"] > 0 and r["samples_nonfinite"] == 0 for r in rows)
    md = (tmp_path / "quality_vs_steps.md").read_text()
    assert "- machine: test" in md and "| flow_heun | flow_matching | 3 | 5 |" in md
    assert (tmp_path / "quality_vs_steps.png").stat().st_size > 1000
    data = json.loads((tmp_path / "quality_vs_steps.json").read_text())
    assert data["meta"]["n"] == 6 and len(data["rows"]) == len(rows)


def test_every_sampler_starts_from_the_same_noise(models):
    """With a zero velocity every scheduler returns its start (up to float32 rounding in the
    multistep updates): the seed's noise, for all."""
    fm, _, _ = models
    zero = FlowMatchingModel(**SMALL).eval()   # zero-initialised velocity head
    out = {}
    for s in samplers_for(fm=zero, steps=(2,)):
        out[s.name], _ = s.draw(4, None, torch.Generator().manual_seed(5))
    ref = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    for name, x in out.items():
        torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-5, msg=name)


def test_an_ntm_of_several_step_counts_is_compared_at_each():
    """Without ntm_steps the NTM is sampled at every step count it was trained on."""
    many = NTM((2,), steps=(2, 4, 8), width=16, depth=1, heads=2)
    one = NTM((2,), steps=4, width=16, depth=1, heads=2)
    assert [s.steps for s in samplers_for(ntm=many)] == [2, 4, 8]
    assert [s.steps for s in samplers_for(ntm=one)] == [4]
    assert [s.steps for s in samplers_for(ntm=many, ntm_steps=[8])] == [8]


def test_the_ntms_sample_at_each_temperature(models):
    """One NTM row per temperature (``ntm@tau`` below 1), each drawing exactly what
    ``NTM.sample(temperature=tau)`` draws from the same generator."""
    _, ntm, ablation = models
    rows = samplers_for(ntm=ntm, ntm_ablation=ablation, ablation_steps=(2,),
                        temperatures=(1.0, 0.5))
    assert [s.name for s in rows] == ["ntm", "ntm@0.5", "ntm_identity_transporter",
                                      "ntm_identity_transporter@0.5"]
    y = torch.arange(4) % 3
    draws = {}
    for s in rows[:2]:
        draws[s.name], nfe = s.draw(4, y, torch.Generator().manual_seed(3))
        assert nfe == 2
    for name, tau in (("ntm", 1.0), ("ntm@0.5", 0.5)):
        expected = ntm.sample(4, y=y, temperature=tau, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(draws[name], expected, rtol=0, atol=0)
    assert (draws["ntm"] - draws["ntm@0.5"]).abs().max() > 1e-3


def test_markdown_table_sorts_and_formats():
    rows = [{"sampler": "unipc", "model": "flow_matching", "steps": 8, "nfe": 8,
             "ms_per_sample": 0.5, "frechet_distance": 25.0},
            {"sampler": "unipc", "model": "flow_matching", "steps": 4, "nfe": 4,
             "ms_per_sample": 0.25, "frechet_distance": 32.125}]
    lines = markdown_table(rows).splitlines()
    assert lines[0] == "| sampler | model | steps | NFE | ms / sample | Frechet distance |"
    assert lines[2] == "| unipc | flow_matching | 4 | 4 | 0.250 | 32.12 |"
    assert quality_keys(rows) == ["frechet_distance"]
    with pytest.raises(ValueError, match="frechet_distance"):
        quality_keys([{"sampler": "x"}])


@pytest.mark.parametrize("kwargs,needle", [
    (dict(n=0), "n must be a positive integer, got 0"),
    (dict(labels=torch.zeros(3, dtype=torch.long)), "labels must have shape [4], got [3]"),
    (dict(schedulers=("ddim",)), "schedulers must be among"),
    (dict(steps=(0, 2)), "step counts must be positive integers, got [0]"),
    (dict(fm=None), "needs at least one of ntm, fm, ntm_ablation"),
    (dict(guidance=1.0), "guidance 1.0 needs labels, got labels=None"),
    (dict(temperatures=(1.0, -0.5)), "temperatures must be distinct finite numbers >= 0, got "
                                     "[1.0, -0.5]"),
    (dict(temperatures=()), "temperatures must be distinct finite numbers >= 0, got []"),
])
def test_bad_arguments_are_named(models, kwargs, needle):
    fm, _, _ = models
    args = {**dict(fm=fm, quality=moments, n=4, progress=False), **kwargs}
    with pytest.raises(ValueError) as exc:
        compare_samplers(**args)
    assert needle in str(exc.value)
