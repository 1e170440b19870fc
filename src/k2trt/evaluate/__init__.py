"""Tool-call evaluation against any OpenAI-compatible endpoint, in MoonshotAI/K2-Vendor-Verifier's
format: request bodies in a JSONL file, results.jsonl and summary.json out.

>>> from k2trt.evaluate import run_eval  # doctest: +SKIP
>>> run_eval("samples.jsonl", "http://127.0.0.1:8000/v1").summary["finish_tool_calls"]  # doctest: +SKIP
"""  # noqa: E501

from k2trt.evaluate.run import EvalRun, run_eval

__all__ = ["EvalRun", "run_eval"]
