"""`gandist report`: a self-contained HTML page (and PNGs) of a run dir's signals that explains every rollback.

Modules: runlog (reading the run dir), series (columns, decimation), panels (what is drawn, as data), page (plotly
HTML), pngs (matplotlib), facts (the header), explain (rollbacks in words; also used by the training loop),
build (the command). Nothing heavy is imported here: the loop imports `gandist.report.explain`.
"""
