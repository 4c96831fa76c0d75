"""workbench.viz.curves and axes: the whole-run figure of a real-shaped event log (written through EventLog, so
every event is one a run writes) plots the logged learning rates, gradient norms and losses, marks stage starts and
the resume, labels its progress, maps steps to training tokens, and every axis carries usable tick labels."""

import math

import numpy as np
import pytest

from workbench.distill.config import RunConfig, StageConfig
from workbench.distill.events import EventLog, read_typed
from workbench.viz import axes, curves

TOKENS_PER_STEP = 2 * 8            # batch_size x seq_len of both stages below
STAGES = [StageConfig(name="align", losses={"hidden": 1.0}, tokens=4 * TOKENS_PER_STEP, batch_size=2, seq_len=8),
          StageConfig(name="kd", losses={"kl": 1.0, "ce": 0.5}, tokens=6 * TOKENS_PER_STEP, batch_size=2, seq_len=8)]


def _lr(step: int) -> float:
    return 1e-3 * (1 - step / 20)


def _grad(step: int) -> float:
    return 3.0 / step


def _step(log, step, stage, idx, first):
    fields = {"align": {"loss_hidden": 1.0 / step}, "kd": {"loss_kl": 0.8 / step, "loss_ce": 2.0 / step}}[stage]
    loss = sum(fields.values()) if stage == "align" else fields["loss_kl"] + 0.5 * fields["loss_ce"]
    log.append("step", step=step, stage=stage, stage_idx=idx, stage_step=step - first, loss=loss, lr=_lr(step),
               grad_norm=_grad(step), tokens=TOKENS_PER_STEP, tokens_per_s=1000.0 + step, **fields)


@pytest.fixture
def run_log(tmp_path):
    """A two-stage run (align: steps 1-4, kd: steps 5-10) that stops after step 7, resumes from its checkpoint at
    step 6 (step 7 logged again) and finishes. Returns (path, number of lines before the resume)."""
    config = RunConfig(teacher="teacher", replace=[1], stages=STAGES)
    log = EventLog(tmp_path / "events.jsonl", fsync=False)
    log.append("run_start", config=config.to_dict(), replaced=[1])
    log.append("eval", step=0, stage="init", ppl_student=80.0, ppl_teacher=25.0, kl=1.5, agreement=0.3)
    log.append("stage_start", stage="align", stage_idx=0, steps=4, tokens=4 * TOKENS_PER_STEP,
               losses={"hidden": 1.0}, train="mixers", step=0)
    for s in range(1, 5):
        _step(log, s, "align", 0, 0)
    log.append("eval", step=4, stage="align", ppl_student=60.0, ppl_teacher=25.0, kl=1.0, agreement=0.4)
    log.append("stage_start", stage="kd", stage_idx=1, steps=6, tokens=6 * TOKENS_PER_STEP,
               losses={"kl": 1.0, "ce": 0.5}, train="mixers", step=4)
    for s in range(5, 8):
        _step(log, s, "kd", 1, 4)
    before_resume = len(read_typed(log.path)[0])
    log.append("resume", step=6, stage_idx=1, stage_step=2, checkpoint="step-000000006", verified=True)
    for s in range(7, 11):
        _step(log, s, "kd", 1, 4)
    log.append("eval", step=10, stage="kd", ppl_student=40.0, ppl_teacher=25.0, kl=0.7, agreement=0.5)
    log.append("run_end", teacher="teacher", mixer="mamba2", replaced=[1], steps=10, split="heldout",
               ppl_student=41.0, ppl_teacher=25.0, ppl_ratio=1.64, kl=0.7, agreement=0.5, tokens=128,
               train_tokens=10 * TOKENS_PER_STEP)
    return log.path, before_resume


def _traces(fig, name):
    return [t for t in fig.data if t.name == name]


def _only(fig, name):
    (trace,) = _traces(fig, name)
    return trace


def test_learning_rate_and_gradient_norm_are_the_logged_values(run_log):
    events, _ = read_typed(run_log[0])
    fig = curves.training_figure(events)
    lr = _only(fig, "align · learning rate")
    assert list(lr.x) == [1, 2, 3, 4]
    np.testing.assert_allclose(lr.y, [_lr(s) for s in range(1, 5)])
    grad = _only(fig, "kd · gradient norm")
    assert list(grad.x) == list(range(5, 11))                   # step 7, logged twice, kept once (the last)
    np.testing.assert_allclose(grad.y, [_grad(s) for s in range(5, 11)])
    assert grad.xaxis == "x5" and lr.xaxis == "x3"               # their own panels, below the losses
    assert fig.layout.yaxis5.type == "log" and "gradient norm" in fig.layout.yaxis5.title.text
    kl = _only(fig, "kd · loss_kl")
    np.testing.assert_allclose(kl.y, [0.8 / s for s in range(5, 11)])
    assert _only(fig, "align · loss_hidden").xaxis == "x"
    assert not _traces(fig, "align · loss")                      # a one-term stage's total is drawn once


def test_stage_and_resume_markers_on_every_panel(run_log):
    events, _ = read_typed(run_log[0])
    assert curves.stage_starts(events) == [("align", 1), ("kd", 5)]
    assert curves.resume_steps(events) == [6]
    fig = curves.training_figure(events)
    panel_lines = [s for s in fig.layout.shapes if s.type == "line"]
    stage_lines = [s for s in panel_lines if s.line.dash == curves.STAGE_LINE["dash"]]
    resume_lines = [s for s in panel_lines if s.line.dash == curves.RESUME_LINE["dash"]]
    assert sorted({s.x0 for s in stage_lines}) == [4.5] and len(stage_lines) == 6    # before kd's first step
    assert sorted({s.x0 for s in resume_lines}) == [6.5] and len(resume_lines) == 6  # after the checkpoint's step
    texts = [a.text for a in fig.layout.annotations]
    assert "resumed after step 6" in texts and "<b>align</b>" in texts and "<b>kd</b>" in texts
    losses = curves.loss_curves(events)                          # the single-panel figure marks them too
    assert sorted(s.x0 for s in losses.layout.shapes) == [4.5, 6.5]
    assert "resumed after step 6" in [a.text for a in losses.layout.annotations]


def test_progress_bar_is_labelled_and_filled_by_the_share_done(run_log, tmp_path):
    path, before_resume = run_log
    events, _ = read_typed(path)
    running = events[:before_resume]                             # stopped after step 7 of 10, before the resume
    state = curves.progress(running)
    assert (state.step, state.total, state.stage, state.stage_idx, state.stages, state.state) == \
           (7, 10, "kd", 1, 2, "running")
    fig = curves.training_figure(running)
    (done,) = [s for s in fig.layout.shapes if s.name == "progress done"]
    (whole,) = [s for s in fig.layout.shapes if s.name == "progress"]
    assert (done.x0, done.x1, whole.x1) == (0, pytest.approx(0.7), 1)
    (label,) = [a for a in fig.layout.annotations if a.name == "progress label"]
    assert label.text.startswith("step 7 of 10 (70 %) · stage 2 of 2: kd · 1.01k tokens/s")
    assert min(done.y0, label.y) > 1                             # above the panels
    finished = curves.progress(events)
    assert (finished.state, finished.fraction) == ("done", 1.0) and finished.label.endswith("done")
    log = EventLog(tmp_path / "failed.jsonl", fsync=False)
    log.append("run_start", config=RunConfig(replace=[1], stages=STAGES).to_dict(), replaced=[1])
    log.append("error", message="non-finite loss nan at step 3\nresume from step-000000002", step=2)
    failed = curves.progress(read_typed(log.path)[0])
    assert failed.state == "stopped" and failed.label.endswith("stopped: non-finite loss nan at step 3")


def test_training_tokens_on_a_second_axis(run_log):
    events, _ = read_typed(run_log[0])
    tokens = curves.tokens_by_step(events)
    assert tokens == {s: s * TOKENS_PER_STEP for s in range(11)}  # step 7 logged twice counts once
    fig = curves.training_figure(events)
    for top, base in (("xaxis7", "x"), ("xaxis8", "x2")):
        axis = fig.layout[top]
        assert (axis.side, axis.overlaying, axis.matches) == ("top", base, "x")
        assert list(axis.tickvals) == list(range(11))
        assert list(axis.ticktext) == [curves.compact(s * TOKENS_PER_STEP) for s in range(11)]
    assert curves.compact(12_345) == "12.3k" and curves.compact(4_100_000) == "4.1M" and curves.compact(512) == "512"


def test_every_panel_has_tick_labels_on_whole_steps(run_log):
    events, _ = read_typed(run_log[0])
    for fig, n in ((curves.training_figure(events), 6), (curves.eval_curves(events), 3)):
        for i in range(1, n + 1):
            axis = fig.layout[f"xaxis{'' if i == 1 else i}"]
            assert axis.showticklabels is True and axis.dtick == 1 and axis.tick0 == 0
    fig = curves.eval_curves(events)
    ppl = [v for t in fig.data if t.name in ("student", "teacher") for v in t.y]
    ticks = list(fig.layout.yaxis.tickvals)
    assert len([t for t in ticks if min(ppl) <= t <= max(ppl)]) >= 2   # 25..80: within one decade, still labelled
    assert fig.layout.yaxis.type == "log" and list(fig.layout.yaxis.ticktext) == [f"{t:g}" for t in ticks]


def test_smoothing_draws_the_ema_over_faint_raw_values(run_log):
    events, _ = read_typed(run_log[0])
    fig = curves.training_figure(events, smoothing=0.6)
    raw, smooth = _only(fig, "kd · loss_kl (raw)"), _only(fig, "kd · loss_kl")
    np.testing.assert_allclose(raw.y, [0.8 / s for s in range(5, 11)])
    np.testing.assert_allclose(smooth.y, curves.ema(list(raw.y), 0.6))
    np.testing.assert_allclose(smooth.customdata, raw.y)         # hover shows the raw value
    assert raw.opacity == curves.RAW_OPACITY and raw.showlegend is False
    grad = _only(fig, "kd · gradient norm")
    np.testing.assert_allclose(grad.y, curves.ema([_grad(s) for s in range(5, 11)], 0.6))


def test_ema_is_bias_corrected_and_skips_gaps():
    out = curves.ema([1.0, 2.0, None, math.nan, 4.0], 0.5)
    # by hand: a = 0.5, 1.25, 2.625; weights 0.5, 0.75, 0.875
    assert out[2] is None and out[3] is None
    np.testing.assert_allclose([out[0], out[1], out[4]], [1.0, 5 / 3, 3.0])
    assert curves.ema([3.0, 1.0], 0.0) == [3.0, 1.0]
    with pytest.raises(ValueError, match="smoothing"):
        curves.ema([1.0], 1.0)


def test_empty_and_old_logs_draw():
    fig = curves.training_figure([])
    assert any("waiting" in a.text for a in fig.layout.annotations)
    (label,) = [a for a in fig.layout.annotations if a.name == "progress label"]
    assert label.text == "step 0 · starting"
    old = [{"type": "step", "step": s, "stage": "kd", "loss": 1.0 / s} for s in range(1, 4)]  # no lr, no tokens
    fig = curves.training_figure(old)
    assert list(_only(fig, "kd · loss").x) == [1, 2, 3] and "xaxis7" not in fig.layout.to_plotly_json()


def test_log_ticks_label_every_range():
    assert axes.log_ticks([0.001, 0.5, 10]) == [0.001, 0.01, 0.1, 1.0, 10.0]       # powers of ten when they do
    for lo, hi in ((25, 80), (31, 33), (1.01, 1.02), (20, 60)):
        ticks = axes.log_ticks([lo, hi])
        inside = [t for t in ticks if lo <= t <= hi]
        assert len(inside) >= 2 and inside == ticks, (lo, hi, ticks)
    assert axes.log_ticks([20, 60]) == [20.0, 30.0, 40.0, 50.0, 60.0]
    assert axes.log_ticks([0, -1, math.nan, None]) is None
    assert axes.log_ticks([5, 5]) == [5.0]


def test_step_ticks_are_whole_steps():
    assert axes.step_ticks(6)["dtick"] == 1 and axes.step_ticks(40)["dtick"] == 5
    assert axes.step_ticks(1000)["dtick"] == 100 and axes.step_ticks(0)["dtick"] == 1
    for last in (1, 3, 7, 19, 123, 4567):
        d = axes.step_ticks(last)["dtick"]
        assert isinstance(d, int) and d >= 1 and last / d <= axes.MAX_STEP_TICKS
