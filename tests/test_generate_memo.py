"""`generate` and `optimize` remember their result per spec (lazyadam/codegen/pipeline.py): asked
again, they give what they gave, without lowering again; what they remember is what a fresh
run of the pipeline gives; `LAZYADAM_DUMP` still dumps every call."""

from __future__ import annotations

from lazyadam import Spec, generate
from lazyadam.codegen import pipeline
from lazyadam.rules import LION

SPECS = [Spec(), Spec(sparse=False, amsgrad=True), Spec(static={"beta1": 0.8}),
         Spec(static={"beta1": 0.7}), LION.spec(sparse=False, dtype="float64")]


def test_a_spec_asked_again_gets_its_source_without_lowering_again(monkeypatch):
    first = [generate(spec, target) for spec in SPECS for target in ("c", "cuda")]
    lowered = []
    monkeypatch.setattr(pipeline, "lower", lambda *args: lowered.append(args))
    again = [generate(spec, target) for spec in SPECS for target in ("c", "cuda")]
    assert all(a is b for a, b in zip(first, again)) and not lowered
    assert pipeline.optimize(SPECS[0]) is pipeline.optimize(SPECS[0])


def test_what_is_remembered_is_what_the_pipeline_gives_afresh():
    for spec in SPECS + SPECS[::-1]:
        for target in ("c", "cuda"):
            fresh = pipeline.stages(spec, target)  # every stage run again, nothing remembered
            source = generate(spec, target)
            assert (source.text, source.header) == (fresh["source"], fresh["header"])
    assert generate(SPECS[0], symbol="my_step").symbol == "my_step"
    assert generate(SPECS[0]).symbol != "my_step"


def test_every_call_still_dumps_its_stages(tmp_path, monkeypatch):
    generate(SPECS[1])
    for folder in ("one", "two"):
        monkeypatch.setenv("LAZYADAM_DUMP", str(tmp_path / folder))
        generate(SPECS[1])
        assert any((tmp_path / folder).rglob("*source.txt")), folder
