"""afcore: the small package shared by the alias-free diffusion workbook's notebooks.

Modules are flat and each is taught by a notebook (named in its docstring):
``signal`` and ``metrics`` (00-03 theory notebooks), ``layers`` (02, 03), ``params`` and ``run`` (the pipeline),
``utils`` (seeding, atomic writes, figures), ``train`` (the shared training loop).
"""

__version__ = "0.1.0"
