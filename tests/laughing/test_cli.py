"""``workbench laughing RUN_DIR`` (workbench.laughing.cli) and the speed benchmark on a tiny run."""

import json

import pytest
import torch

from workbench.students import student_mixers


@pytest.fixture(scope="module")
def tiny_hyena_run(tmp_path_factory, teacher):
    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench.distill.config import RunConfig, StageConfig
    from workbench.distill.run import Run

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("laughing")
    config = LlamaConfig(vocab_size=teacher.config.vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(path / "teacher")
    teacher.tokenizer.save_pretrained(path / "teacher")
    stages = [StageConfig("kd", losses={"kl": 1.0}, tokens=2 * 2 * 32, batch_size=2, seq_len=32, lr=1e-3)]
    cfg = RunConfig(teacher=str(path / "teacher"), mixer="hyena", keep_attention=[0], device="cpu", stages=stages,
                    eval_every=0, checkpoint_every=2,
                    mixer_config={"max_len": 512, "filter_width": 16, "filter_layers": 2, "pos_bands": 4})
    Run(cfg, path / "run", progress=False, final_eval_tokens=200).execute()
    return path / "run"


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
