"""`python -m graft.evals.lm_eval_tasks` prints lm-eval's --include_path for graft's tasks."""

from graft.evals.lm_eval_tasks import include_path

print(include_path())
