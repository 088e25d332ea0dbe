"""One module per DVC stage: a small ``Config`` built from the stage's ``params.yaml`` sections and
``run(cfg, device, out_dir) -> metrics`` that does everything the stage produces (checkpoints, metrics, figures)
under ``out_dir``.

Layering, bottom to top: the signal core (``afcore.filters``, ``signal``, ``fastops``) -> layers and metrics ->
models (``ddpm``, ``vae``, ``ldm``, ``i2sb``, ...) -> stages (this package) -> notebooks, which call a stage's
steps one by one, explain them and plot. ``afcore.stages.common`` holds what every stage shares: the config base
class, seeded generators on the device, timers, mean +- standard error and verdicts, image helpers.
The pipeline tools (params, run, smoke, claims, ...) live apart, in the ``workbook`` package.
"""
