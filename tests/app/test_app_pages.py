"""The dashboard's tabs without a browser: the Runs form says what it will run, offers only this machine's devices
and reports bad numbers; ticked runs are compared and a clicked row is shown; the Teacher and Student choices
survive in the URL; the Inspect tab labels matrix cells with their tokens, clears stale numbers and samples with a
seed."""

from types import SimpleNamespace

import pytest
import torch

pn = pytest.importorskip("panel")

from panel.io.location import Location  # noqa: E402

from workbench.app import Dashboard  # noqa: E402
from workbench.app.inspect_panel import cell_tokens, generation_html, label_tokens  # noqa: E402
from workbench.app.run_panel import field_problem  # noqa: E402
from workbench.app.teacher_panel import available_devices  # noqa: E402
from workbench.distill.run_dir import RunDir  # noqa: E402
from workbench.viz.matrices import attention_vs_mixing  # noqa: E402

CONFIG = {"teacher": "t", "mixer": "hyena", "stages": [{"tokens": 64, "batch_size": 1, "seq_len": 32}]}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, tiny_teacher_dir):
    """A dashboard with the tiny teacher loaded on the CPU (layer 1 replaced by the default mixer)."""
    app = Dashboard(tmp_path_factory.mktemp("runs"))
    app.teacher.source, app.teacher.device = tiny_teacher_dir, "cpu"
    app.teacher.load()
    return app


def test_devices_are_the_machines():
    devices = available_devices()
    assert devices[:2] == ["auto", "cpu"]
    assert ("cuda" in devices) == torch.cuda.is_available()


def test_bad_numbers_show_an_error_and_block_the_start(loaded):
    runs = loaded.runs
    box = runs.fields["batch_size"]
    box.value = 0
    assert runs.batch_size == 4 and box.value == 0          # kept as typed, not reverted, and not taken
    assert "Batch size** must be at least 1 (got 0)" in runs.errors["batch_size"]
    with pytest.raises(ValueError, match="fix the form first.*Batch size"):
        runs.run_config()
    runs.fields["lr"].value = None
    assert "Learning rate**: enter a number" in runs.errors["lr"]
    box.value, runs.fields["lr"].value = 2, 3e-4
    assert runs.errors == {} and (runs.batch_size, runs.lr) == (2, 3e-4)
    runs.seq_len = 64                                       # set from code: the field follows
    assert runs.fields["seq_len"].value == 64 and runs.run_config().stages[0].seq_len == 64
    assert field_problem(runs.param.eval_every, "Eval every", 2.5) == "**Eval every** must be a whole number (got 2.5)"


def test_the_form_names_the_student_it_will_train(loaded):
    runs, student = loaded.runs, loaded.student
    student.mixer, student.keep_attention = "hyena", [0]
    spec = runs.student_spec()
    assert "**hyena**" in spec and "layer **1**" in spec and "attention kept in 1 of 2" in spec
    student.keep_attention = [0, 1]
    assert "none (choose layers in the Student tab)" in runs.student_spec()
    student.keep_attention = [0]


def test_ticked_runs_are_compared_and_a_clicked_row_is_shown(tmp_path):
    root = tmp_path / "runs"
    for name, loss in [("a", 3.0), ("b", 2.0), ("c", 1.0)]:
        run = RunDir.create(root / name, {"run": CONFIG})
        run.log("run_start", config=CONFIG, replaced=[1])
        run.log("step", step=1, stage="kd", loss=loss, tokens=32, tokens_per_s=100.0)
    runs = Dashboard(root).runs
    assert runs.compare_body.objects == [] and "Tick runs" in runs.compare_hint.object   # no empty chart
    names = list(runs.table.value["run"])
    runs.table.selection = [names.index("a"), names.index("c")]
    assert sorted(runs.compared) == ["a", "c"]
    assert runs.compare_losses in runs.compare_body.objects
    assert {t.name for t in runs.compare_losses.object.data} == {"a · kd", "c · kd"}
    assert sorted(runs.compare_rows.value["run"]) == ["a", "c"]
    # a new run moves the rows: the ticks follow the names
    run = RunDir.create(root / "d", {"run": CONFIG})
    run.log("run_start", config=CONFIG, replaced=[1])
    runs.refresh()
    names = list(runs.table.value["run"])
    assert sorted(names[i] for i in runs.table.selection) == ["a", "c"]
    runs.compare_x = "tokens"
    assert runs.compare_losses.object.layout.xaxis.title.text == "training tokens"
    runs.view = 1
    runs._clicked(SimpleNamespace(column="loss", row=names.index("b"), value=2.0))
    assert runs.selected == "b" and runs.view == 0 and "**b**" in runs.stats.object
    runs._clicked(SimpleNamespace(column="_index", row=names.index("a"), value=None))   # not a data cell
    assert runs.selected == "b"


def test_teacher_and_student_choices_live_in_the_url(tmp_path, tiny_teacher_dir):
    first = Dashboard(tmp_path / "runs")
    location = Location()
    first.remember(location)
    first.teacher.param.update(source=tiny_teacher_dir, device="cpu")
    first.teacher.load()
    first.student.param.update(mixer="hyena", init="random", keep_attention=[1])
    first.tabs.active = 1
    query = location.query_params
    assert (query["teacher"], query["device"], query["mixer"], query["init"], query["tab"]) == \
        (tiny_teacher_dir, "cpu", "hyena", "random", 1)
    # a reload: a new session on the same URL
    again = Dashboard(tmp_path / "runs")
    again.remember(Location(search=location.search))
    assert again.teacher.teacher is not None                 # held by this process already: shown loaded
    assert (again.student.mixer, again.student.init, again.student.keep_attention) == ("hyena", "random", [1])
    assert again.tabs.active == 1
    # values that no longer fit (a device this machine lacks, an unknown mixer) leave their choice at its default;
    # layers from the URL wait for the first teacher loaded, if they fit it
    device = "cuda:7" if torch.cuda.device_count() < 8 else "tpu"
    fresh = Dashboard(tmp_path / "runs")
    fresh.remember(Location(search=f"?keep=%5B0%5D&teacher=nowhere&device={device}&mixer=nope&init=random"))
    assert (fresh.teacher.device, fresh.student.mixer, fresh.student.init) == ("auto", "mamba2", "random")
    assert fresh.teacher.teacher is None and fresh.student.keep_attention == [0]
    fresh.teacher.param.update(source=tiny_teacher_dir, device="cpu")
    fresh.teacher.load()
    assert fresh.student.keep_attention == [0] and fresh.student.replaced == [1]


def test_matrix_cells_carry_their_tokens():
    tokens = [f"t{i}" for i in range(10)]
    assert cell_tokens([0, 1, 2], tokens) == ["t0", "t1", "t2"]
    assert cell_tokens([1.5, 5.5, 9.5], tokens) == ["t0…t3", "t4…t7", "t8…t9"]      # blocks of 4 (the last cut)
    attn = torch.softmax(torch.randn(10, 10), -1).tril()
    fig = label_tokens(attention_vs_mixing(attn, torch.randn(10, 10)), tokens)
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    assert len(heatmaps) == 3
    for trace in heatmaps:
        assert list(trace.customdata[3][7]) == ["t3", "t7"]                      # (query t=3, key s=7)
        assert "customdata[0]" in trace.hovertemplate
    assert list(fig.layout.xaxis.ticktext) == tokens and list(fig.layout.yaxis3.ticktext) == tokens


def test_generations_are_plain_text():
    text = generation_html("Student", "a *b*", " <i>c</i> & d\n")
    assert "a *b*" in text and "&lt;i&gt;c&lt;/i&gt; &amp; d\n" in text and "<i>" not in text


def test_inspect_samples_with_a_seed_and_clears_stale_numbers(loaded):
    inspect = loaded.inspect
    loaded.student.build()
    inspect.source = "(Student tab: untrained build)"
    inspect.load()
    assert inspect.matrices.objects == []                    # no empty chart before the first "Show matrices"
    inspect.param.update(prompt="The Union", new_tokens=5)
    greedy = inspect.generate()
    assert greedy[0] == loaded.teacher.teacher.generate("The Union", max_new_tokens=5)   # transformers' greedy
    inspect.param.update(decoding="sample", temperature=1.0, top_p=0.9, seed=7)
    drawn = inspect.generate()
    assert inspect.generate() == drawn                       # the same seed, the same draw
    inspect.seed = 8
    assert inspect.generate() != drawn
    assert "seed 8" in inspect.student_text.object and "The Union" in inspect.student_text.object
    inspect.compare(max_tokens=32)
    seen = []
    inspect.param.watch(lambda event: seen.append(event.new), "metrics")
    inspect.compare(max_tokens=32)                           # again: the first table is gone while it computes
    assert seen[0] == {} and set(seen[-1]) >= {"ppl_teacher", "ppl_student", "kl", "agreement"}
