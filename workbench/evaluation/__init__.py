"""Evaluation beyond perplexity: lm-evaluation-harness on teachers, students and run folders, with tasks shipped
as local data (no network), results saved per model and teacher/student retention side by side.

    from workbench.evaluation import harness, tasks
    teacher = harness.evaluate(harness.load_lm("smollm2-135m"), ["wb_cloze", "wb_cloze_gen"], limit=50)
    student = harness.evaluate(harness.load_lm("runs/a"), ["wb_cloze", "wb_cloze_gen"], limit=50)
    print(harness.format_table([teacher, student]))        # scores side by side, retention of the student

- ``tasks``: the table of shipped tasks (name -> data file, chance level, scoring, lm_eval config), and the
  command that rebuilds their data (``python -m workbench.evaluation.tasks build``)
- ``harness``: any model as an lm_eval LM (lm_eval's own HFLM), running tasks, the results JSON, retention
- ``store``: a run folder's scores (``RUN/eval/tasks.json``) and its teacher's (``RUN/eval/teacher.json``), merged
  task by task, where notebooks and the dashboard's compare view read them
- ``scores``: several models' results side by side per task, with each student's retention (rows for
  ``workbench.viz.evaluation.task_scores``, and a table)
- ``cloze`` (task 1), and the builders of the other shipped tasks: one module per task family; ``transcript``: the
  spoken prose of a SOTU address that they read (stage directions and the floor's interjections removed)

``workbench eval --model M --tasks T1,T2 --json out.json`` is the command. lm_eval is the optional extra ``eval``
(``pip install -e '.[eval]'``); nothing here imports it before a task runs.
"""
