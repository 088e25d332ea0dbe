"""workbook: the pipeline's tools, kept apart from the ``afcore`` library that notebooks and stages import.

``params`` (profiles -> params.yaml, validation), ``run`` (a notebook as a DVC stage through papermill), ``deps``
(each stage's code dependencies from its import closure), ``smoke`` (the whole pipeline on the smoke profile),
``claims`` (numbers quoted in prose against metrics/), ``stage_ab`` (a stage's cost at two revisions),
``exercises`` (student copies of the notebooks), ``bench`` and ``bench_train`` (benchmarks that write metrics/).
"""
