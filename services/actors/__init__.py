"""Ray actors of the live runtime, one per role (docs/DESIGN.md, "Data flow").

Each module holds a plain class (testable without Ray); services.pipeline wraps it with
`ray.remote`. Stages talk through `handle.put.remote(msg)` and report metrics in batches.
"""
