"""``workbench laughing RUN_DIR`` (workbench.laughing.cli) and the speed benchmark on a tiny run."""

import json

import pytest

from tests.helpers import tiny_models
from workbench.students import student_mixers


@pytest.fixture(scope="module")
def tiny_hyena_run(tmp_path_factory, teacher):
    return tiny_models.tiny_hyena_run(tmp_path_factory.mktemp("laughing"), teacher, keep_attention=[0],
                                      checkpoint_every=2)


def test_cli_writes_the_error_vs_order_table(tiny_hyena_run, tmp_path, capsys):
    from workbench.cli import main
    from workbench.distill.load import load_run_student

    student = load_run_student(tiny_hyena_run, device="cpu", dtype="float32").student
    assert sorted(student_mixers(student)) == [1]
    out = tmp_path / "table.json"
    code = main(["laughing", str(tiny_hyena_run), "--orders", "2,8", "--method", "modal", "--steps", "10",
                 "--length", "64", "--eval-tokens", "200", "--window", "64", "--device", "cpu", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["orders"] == [2, 8] and report["length"] == 64 and report["hankel_size"] == 32
    assert set(report["seconds"]) == {"fits", "floors", "evaluations", "total"}
    assert 0 < report["seconds"]["fits"] < report["seconds"]["total"]
    rows = report["table"]
    assert [(r["layer"], r["order"]) for r in rows] == [(1, 2), (1, 8)]
    for r in rows:
        assert {"mse", "hinf", "ppl_before", "ppl_after", "kl_undistilled", "kl_teacher_after", "hankel_size",
                "fit_s"} <= set(r)
        assert r["ppl_after"] > 1 and r["kl_undistilled"] >= -1e-6
    assert rows[1]["mse"] < rows[0]["mse"] and rows[1]["kl_undistilled"] <= rows[0]["kl_undistilled"] + 1e-6
    assert "order    8" in capsys.readouterr().out


def test_speed_benchmark_runs_on_a_tiny_setting(tiny_hyena_run, tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "laughing_speed.py"
    spec = importlib.util.spec_from_file_location("laughing_speed", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "speed.json"
    report = bench.main([str(tiny_hyena_run), "--device", "cpu", "--contexts", "64,250,600", "--new", "8",
                         "--order", "4", "--steps", "20", "--json", str(out)])
    assert json.loads(out.read_text())["setup"]["order"] == 4
    assert report["setup"]["method"] == "modal" and report["setup"]["student_max_len"] == 512
    rows = {(r["context"], r["model"]): r for r in report["rows"]}
    assert set(rows) == {(T, m) for T in (64, 250, 600) for m in ("distilled", "undistilled", "teacher")}
    assert "max_position_embeddings" in rows[250, "teacher"]["skipped"]                  # 256 positions
    assert "HyenaConfig.max_len = 512" in rows[600, "undistilled"]["skipped"]
    for T, model in [(64, "distilled"), (64, "undistilled"), (64, "teacher"), (250, "distilled"),
                     (600, "distilled")]:                  # the modal recurrence has no max_len
        r = rows[T, model]
        assert r["tokens_per_s"] > 0 and r["prefill_s"] > 0 and r["per_token_ms_p50"] > 0


@pytest.mark.parametrize("orders, expected", [("4,8,16", [4, 8, 16]), ("32,", [32])])
def test_orders_read_as_a_comma_list(orders, expected):
    from workbench.cli import build_parser

    assert build_parser().parse_args(["laughing", "RUN", "--orders", orders]).orders == expected


@pytest.mark.parametrize("orders, says", [("4,x", "expected comma-separated orders like 4,8,16"),
                                          ("0,8", "orders must be positive integers"),
                                          (",", "orders must be positive integers")])
def test_orders_refused_before_any_work(orders, says, capsys):
    from workbench.cli import build_parser

    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["laughing", "RUN", "--orders", orders])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--orders" in err and says in err, err
