"""Data side of mtv-eval: example formats, metrics, episode building, data sources.

- `formats`: the one place a task's dataset row becomes an `Example` (shots and query).
- `metrics`: answer post-processing and the VQA / option-letter scores.
- `episodes`: seeded 2-way 1-shot episodes from an image-classification dataset.
- `sources`: where a task's data comes from (hub default or a local prepared copy).
- `lmms_task`: the lmms-eval task class the `tasks/` YAMLs use.
- `prepare`: converters from the official downloads to the local layout.
- `cli`: the `mtv-eval data prepare` and `mtv-eval tasks-path` subcommands.
"""
