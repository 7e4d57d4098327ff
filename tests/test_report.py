import pytest

from kdpipe.report import END, START, results_table, update_readme

ROW = {"arch": "resnet18", "accuracy": 0.97222, "f1_macro": 0.9718, "params": 11172810, "size_mb": 44.7,
       "latency_ms": 2.5, "latency_threads": 1, "speedup_vs_student": 1.0, "throughput_b64": 1234.5}


def test_table_lists_models_in_chain_order_with_figures():
    ev = {"student_int8": {**ROW, "size_mb": 11.3}, "teacher": {**ROW, "arch": "resnet50"}, "student": ROW}
    table = results_table(ev, {"teacher": {"train_seconds": 91.2}})
    lines = table.splitlines()
    assert lines[2].startswith("| teacher | resnet50 | 0.9722 |") and lines[2].endswith("| 91 |")
    assert lines[3].startswith("| student | resnet18 |") and "11,172,810" in lines[3]
    assert lines[4].startswith("| student, ONNX int8 (static) |") and "11.30" in lines[4]
    assert "images/s (batch 64)" in lines[0] and "| 1.00× | 1,234 |" in lines[3]
    assert "1 CPU thread" in table


def test_table_has_a_flip_tta_column_only_when_evaluate_scored_it():
    ev = {"teacher": {**ROW, "accuracy_flip_tta": 0.98101}, "student": {**ROW, "accuracy_flip_tta": 0.975}}
    lines = results_table(ev).splitlines()
    assert "| test accuracy | with flip TTA |" in lines[0]
    assert lines[1].count("|") == lines[0].count("|") == lines[2].count("|")
    assert lines[2].startswith("| teacher | resnet18 | 0.9722 | 0.9810 | 0.9718 |")
    assert "flip TTA" not in results_table({"student": ROW})


def test_readme_update_replaces_only_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold\n{END}\noutro\n")
    update_readme(readme, "| new |")
    assert readme.read_text() == f"intro\n{START}\n| new |\n{END}\noutro\n"
    readme.write_text("no markers")
    with pytest.raises(SystemExit):
        update_readme(readme, "x")


def test_methods_table():
    from kdpipe.compare import markdown_table

    table = {
        "none": {"student": "resnet18", "teacher": None, "epochs": 10, "test_accuracy_best_val": 0.95,
                 "test_accuracy_last": 0.94, "train_seconds": 30.2, "extra_params": 0},
        "kd": {"student": "resnet18", "teacher": "resnet34", "epochs": 10, "test_accuracy_best_val": 0.97,
               "test_accuracy_best_val_std": 0.01, "test_accuracy_last": 0.96, "train_seconds": 41.0,
               "extra_params": 0},
    }
    lines = markdown_table(table).splitlines()
    assert lines[2] == "| none | resnet18 | — | 10 | 0.9500 | 0.9400 | 30 | 0 |"
    assert lines[3] == "| kd | resnet18 | resnet34 | 10 | 0.9700 ± 0.0100 | 0.9600 | 41 | 0 |"
